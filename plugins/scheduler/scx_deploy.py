"""Deploying T2 (sched_ext) policies on the host: a supervised, journaled loader.

A T2 policy is applied by starting the project's loader
(``scx_loader OBJECT name=value ...``, bpf/scx/scx_loader.c) with the
policy's scheduler object and its allow-listed parameters, through
:class:`~plugins.scheduler.sched_ext.SupervisedLoader`.  A BPF scheduler
runs every task of the machine: its narrowest scope is the whole machine.

Crash safety: before the loader starts, a journal row (kind
``scx_loader``, subsystem :data:`JOURNAL_SUBSYSTEM`) records the sched_ext
state before it and a random tag the loader carries in its environment;
once the loader runs, the row gets its pid and start time.  Restore (on
rollback, breaker trip, stop, and at start-up after a crash) stops the
loader found by pid + start time, or by the tag when the daemon died between
starting the loader and recording its pid; the kernel falls back to EEVDF
when the loader exits.

Configuration (``[plugins.scheduler]`` in schedcpd.toml):

- ``scx_root`` — the sched_ext sysfs directory (default
  /sys/kernel/sched_ext; tests point it at a FAKE directory because the
  development hosts' kernel has no sched_ext);
- ``scx_loader`` — the loader binary (``"auto"``: build bpf/scx/scx_loader.c);
- ``scx_object_dir`` — prebuilt ``<scheduler>.bpf.o`` objects (``"auto"``:
  build bpf/scx for the running kernel from /sys/kernel/btf/vmlinux);
- ``scx_event_errors`` — error events (``sched_ext.ERROR_EVENTS``) that trip
  the breaker (default 1: any);
- ``fault_injection`` — test only: with ``SCHEDCP_FAULT_AT`` set to a step of
  :data:`FAULT_STEPS` the daemon SIGKILLs itself there (default off).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from plugins.scheduler import sched_ext, scx_policy, scx_rules, scx_targets, tasks
from plugins.scheduler import scx_binding as binding
from plugins.scheduler.sched_ext import LoaderError, LoaderSpec, SupervisedLoader
from schedcpd.plugin_api import Conflict, InvalidArgument, Journal, JournalEntry, NotSupported

_LOGGER = logging.getLogger(__name__)

JOURNAL_SUBSYSTEM = "scheduler.sched_ext"
KIND = "scx_loader"
TAG_ENV = "SCHEDCP_SCX_TAG"
FAULT_STEPS = ("scx_after_journal", "scx_after_start")
HOST_BTF = Path("/sys/kernel/btf/vmlinux")


def allowed_params(doc: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """The parameters a T2 policy's scheduler accepts, with their ranges."""
    return scx_policy.params_allowed(doc)


class HostBuild:
    """The loader and scheduler objects for the running kernel (built once, cached).

    ``"auto"`` builds bpf/scx with the micro-VM's toolchain against the
    running kernel's BTF (/sys/kernel/btf/vmlinux), in ``<cache>/host``;
    a path uses what an operator (or a package) built beforehand.
    """

    def __init__(self, loader: str, object_dir: str) -> None:
        self.loader = loader
        self.object_dir = object_dir
        self._built: dict[str, Any] | None = None

    def _prepare(self) -> dict[str, Any]:
        """Build bpf/scx against the host kernel's BTF (which must have sched_ext)."""
        if self._built is not None:
            return self._built
        from plugins.scheduler.microvm import build, paths, toolchain
        from plugins.scheduler.microvm.kernel import GuestKernel

        cache = paths.cache_dir() / "host"
        tools = toolchain.fetch(paths.cache_dir())
        release = os.uname().release
        key = f"{release}-{hashlib.sha256(HOST_BTF.read_bytes()).hexdigest()[:16]}"
        directory = cache / "kernel" / key
        header = directory / "vmlinux.h"
        if not header.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            out = subprocess.run([str(tools.bpftool), "btf", "dump", "file", str(HOST_BTF),
                                  "format", "c"], capture_output=True, text=True, check=True)
            header.write_text(out.stdout)
        kernel = GuestKernel(version=f"host-{key}", vmlinuz=HOST_BTF,
                             config=Path(f"/boot/config-{release}"), vmlinux_h=header,
                             directory=directory)
        with paths.locked("build"):
            arts = build.build_all(cache, paths.scx_source_dir(), kernel, tools)
        self._built = {"cache": cache, "tools": tools, "kernel": kernel, "artifacts": arts}
        return self._built

    def loader_path(self) -> Path:
        """The loader binary."""
        if self.loader != "auto":
            return Path(self.loader)
        return Path(self._prepare()["artifacts"].binaries["scx_loader"])

    def object_path(self, doc: dict[str, Any]) -> Path:
        """The scheduler object of a T2 policy (a built-in by name, or its source)."""
        scx = doc["scx"]
        name = scx.get("scheduler")
        if name is not None and self.object_dir != "auto":
            path = Path(self.object_dir) / f"{name}.bpf.o"
            if not path.is_file():
                raise NotSupported(f"no prebuilt scheduler object {path}")
            return path
        built = self._prepare()
        if name is not None:
            return Path(built["artifacts"].objects[name])
        from plugins.scheduler.microvm import build, paths

        with paths.locked("build"):
            return build.compile_source(built["cache"], paths.scx_source_dir(),
                                        built["kernel"], built["tools"],
                                        scx_policy.source_of(doc)[0])


class ScxHost:
    """T2 deployments on this host: one supervised loader per owner (at most one runs)."""

    def __init__(self, journal: Journal, config: dict[str, Any], state_dir: Path) -> None:
        self.journal = journal
        self.root = Path(str(config.get("scx_root") or sched_ext.SCHED_EXT_DIR))
        self.build = HostBuild(str(config.get("scx_loader", "auto")),
                               str(config.get("scx_object_dir", "auto")))
        store = config.get("scx_verified_objects")
        self.verified_objects = Path(str(store)) if store else None
        self.event_limit = int(config.get("scx_event_errors", 1))
        self.btf = Path(str(config.get("scx_btf") or HOST_BTF))
        self.mover = scx_targets.TaskMover(journal, JOURNAL_SUBSYSTEM)
        self.fault_injection = bool(config.get("fault_injection", False))
        self.logs = Path(state_dir) / "scx"
        self.running: dict[str, SupervisedLoader] = {}
        self.lock = threading.RLock()

    def _fault(self, step: str) -> None:
        if self.fault_injection and os.environ.get("SCHEDCP_FAULT_AT") == step:
            _LOGGER.warning("fault injection: SIGKILL at %s", step)
            os.kill(os.getpid(), signal.SIGKILL)

    # -- apply --------------------------------------------------------------

    def apply(self, doc: dict[str, Any], scope: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        """Start the policy's scheduler for ``scope["owner"]`` (or plan it).

        ``scope["pids"]`` (the canary) with targets: attach in partial-switch
        mode and move those processes' threads to SCHED_EXT.  Called again
        for a running owner without ``pids``: widen (re-attach without the
        flag) unless the policy stays partial.  ``scope["artifact"]`` is the
        token's object binding; with ``dry_run`` it is checked only when the
        key is present (``Deploy`` checks before it consumes the token).
        """
        findings = [f for f in scx_policy.validate(doc) if f["severity"] == "error"]
        if findings:
            raise InvalidArgument("; ".join(f["message"] for f in findings))
        owner = str(scope.get("owner") or "dry-run")
        params = {k: int(v) for k, v in doc["scx"].get("params", {}).items()}
        info = sched_ext.detect(self.root)
        text, _ = scx_policy.source_of(doc)
        ops = scx_rules.ops_name(text)
        targets = scx_targets.resolve(doc)
        if dry_run:
            if "artifact" in scope and info["available"]:
                self.check_binding(doc, scope["artifact"])
            return self._plan(owner, doc, params, info, ops, text, targets)
        if not info["available"]:
            raise NotSupported(f"cannot deploy a T2 policy: {info['reason']}")
        artifact = scope.get("artifact")
        with self.lock:
            if owner in self.running:
                if scope.get("pids"):
                    return self._report(owner, doc, [], "already running for this deployment")
                return self._widen(owner, doc, params, artifact)
            others = sorted(self.running)
            if others:
                raise Conflict(f"a sched_ext scheduler is already deployed by {others[0]}")
            pids = [int(p) for p in scope.get("pids") or []]
            partial = bool(pids) and bool(targets)
            pid, prior = self._start(owner, doc, params, artifact, partial)
            moved = self.mover.move(owner, pids) if partial else None
        change = {"target": "sched_ext", "knob": "state", "before": prior["state"],
                  "after": "enabled", "status": "changed", "note": f"loader pid {pid}"}
        note = f"loader pid {pid}: {' '.join(self.running[owner].build_argv(params))}"
        if moved is not None:
            note = (f"partial-switch (SCX_OPS_SWITCH_PARTIAL), {moved['moved']} threads of "
                    f"{len(pids)} target processes moved to SCHED_EXT; {note}")
        return self._report(owner, doc, [change], note, pid=pid, partial=partial, moved=moved,
                            ops=sched_ext.detect(self.root).get("ops"))

    def _loader_parts(self, doc: dict[str, Any], artifact: Any = None) -> tuple[Path, Path]:
        """(loader binary, the policy's object: verified, installed or built here).

        An object the verifier loaded, kept by its digest in
        ``scx_verified_objects`` (``<object_sha256>.bpf.o``), comes first: a
        daemon that cannot build (no toolchain, another host's verifier)
        deploys exactly those bytes.  Whatever is found is then checked
        against the token's binding.
        """
        digest = artifact.get("object_sha256") if isinstance(artifact, dict) else None
        if self.verified_objects is not None and isinstance(digest, str) \
                and re.fullmatch(r"[0-9a-f]{64}", digest):
            kept = self.verified_objects / f"{digest}.bpf.o"
            if kept.is_file():
                return self.build.loader_path(), kept
        try:
            return self.build.loader_path(), self.build.object_path(doc)
        except NotSupported:
            raise
        except Exception as err:  # build or fetch failures of any kind: refuse cleanly
            raise NotSupported(f"the scheduler cannot be built for this kernel "
                               f"({os.uname().release}): {err}") from err

    def check_binding(self, doc: dict[str, Any], artifact: Any) -> None:
        """Raise :class:`ObjectMismatch` unless the token binds this object on this kernel."""
        _, obj = self._loader_parts(doc, artifact)
        binding.check(obj.read_bytes(), artifact, self.btf)

    def _start(self, owner: str, doc: dict[str, Any], params: dict[str, int], artifact: Any,
               partial: bool) -> tuple[int, dict[str, Any]]:
        """Journal, then start the loader on the exact bytes the token binds."""
        binary, source = self._loader_parts(doc, artifact)
        self.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Hash and load the same bytes: a private copy, so nothing can swap
        # the object between the check and the loader's open.
        (self.logs / owner).mkdir(exist_ok=True, mode=0o700)
        obj = binding.bound_copy(source, artifact, self.btf, self.logs / owner / source.name)
        spec = LoaderSpec(binary, allowed_params(doc), obj, partial)
        tag = secrets.token_hex(8)
        loader = SupervisedLoader(spec, root=self.root, log=self.logs / f"{owner}.jsonl",
                                  env={TAG_ENV: tag}, event_limit=self.event_limit)
        try:
            argv = loader.build_argv(params)
        except ValueError as err:
            raise InvalidArgument(str(err)) from err
        info = sched_ext.detect(self.root)
        prior = {"state": info.get("state"), "ops": info.get("ops")}
        new: dict[str, Any] = {"argv": argv, "tag": tag, "pid": None, "start": None}
        entry = self.journal.record(owner, KIND, f"{KIND}:{owner}", prior, new,
                                    subsystem=JOURNAL_SUBSYSTEM)
        self._fault("scx_after_journal")
        try:
            pid = loader.start(params)
        except (LoaderError, RuntimeError, OSError) as err:
            loader.stop()
            self.journal.mark_skipped(entry, f"did not start: {err}")
            log = err.log if isinstance(err, LoaderError) else ""
            raise Conflict(f"the sched_ext loader failed: {err}"
                           + (f"; its output: {log[-600:]}" if log else "")) from err
        self._fault("scx_after_start")
        self.journal.mark_applied(entry, new={**new, "pid": pid, "start": tasks.start_time(pid)})
        self.running[owner] = loader
        return pid, prior

    def _widen(self, owner: str, doc: dict[str, Any], params: dict[str, int],
               artifact: Any) -> dict[str, Any]:
        """After the canary: re-attach without SCX_OPS_SWITCH_PARTIAL (or stay partial)."""
        old = self.running[owner]
        if not old.spec.partial:
            return self._report(owner, doc, [], "already machine-wide", widened=False)
        if scx_targets.switch_mode(doc) == "partial":
            return self._report(owner, doc, [], "stays partial-switch: the policy's scx.switch "
                                "is 'partial' (only its targets run on the scheduler)",
                                widened=False)
        del self.running[owner]
        done = old.stop()
        for entry in self.journal.pending_restore(owner=owner, subsystem=JOURNAL_SUBSYSTEM):
            if entry.kind == KIND:
                self.journal.mark_restored(entry.id, f"loader {done.get('pid')} stopped to "
                                           "re-attach without SCX_OPS_SWITCH_PARTIAL")
        pid, _ = self._start(owner, doc, params, artifact, partial=False)
        change = {"target": "sched_ext", "knob": "switch_all", "before": "0", "after": "1",
                  "status": "changed", "note": f"loader pid {pid}"}
        return self._report(owner, doc, [change], f"widened: loader pid {pid} re-attached "
                            "without SCX_OPS_SWITCH_PARTIAL; every task runs on the scheduler",
                            pid=pid, widened=True)

    def _plan(self, owner: str, doc: dict[str, Any], params: dict[str, int],
              info: dict[str, Any], ops: str | None, text: str,
              targets: dict[str, list[int]]) -> dict[str, Any]:
        defaults = scx_rules.rodata_params(text)
        changes = [
            {"target": "sched_ext", "knob": "state", "before": info.get("state"),
             "after": "enabled", "status": "dry-run", "note": ""},
            {"target": "sched_ext", "knob": "root/ops", "before": info.get("ops"),
             "after": ops, "status": "dry-run", "note": ""},
        ]
        for name, value in sorted(params.items()):
            changes.append({"target": f"sched_ext:{ops}", "knob": name,
                            "before": defaults.get(name), "after": value, "status": "dry-run",
                            "note": "the scheduler's compiled default before"})
        problems = [] if info["available"] else [
            {"target": "sched_ext", "knob": "state", "status": "error", "note": info["reason"]}]
        report = self._report(owner, doc, changes, "plan: nothing was started",
                              canary="partial" if targets else "machine",
                              switch=scx_targets.switch_mode(doc))
        report["targets"] = targets
        report["problems"] = problems
        report["dry_run"] = True
        return report

    def _report(self, owner: str, doc: dict[str, Any], changes: list[dict[str, Any]],
                note: str, **extra: Any) -> dict[str, Any]:
        return {"subsystem": "scheduler", "owner": owner, "policy": doc["policy"]["name"],
                "track": scx_policy.TRACK, "dry_run": False, "scope": "machine",
                "targets": {}, "changes": changes, "supervised": True,
                "summary": {"changed": len(changes)}, "problems": [], "note": note, **extra}

    # -- health ---------------------------------------------------------------

    def health(self, owner: str) -> dict[str, Any] | None:
        """The owner's loader health, or None when the owner runs no loader."""
        with self.lock:
            loader = self.running.get(owner)
        if loader is None:
            return None
        failure = loader.poll()
        if failure is None:
            return {"healthy": True, "pid": loader.pid, "state": loader.state()}
        return {"healthy": False, "guard": failure.guard, "baseline": failure.baseline,
                "observed": failure.observed, "detail": failure.detail, "pid": loader.pid}

    def state(self) -> list[dict[str, Any]]:
        """Running loaders, for ``schedcp_state``."""
        with self.lock:
            return [{"owner": owner, "pid": loader.pid, "argv": loader.build_argv({})[:3],
                     "partial": loader.spec.partial, "state": loader.state()}
                    for owner, loader in self.running.items()]

    # -- restore --------------------------------------------------------------

    def restore(self, owner: str | None) -> dict[str, Any]:
        """Stop the loader of ``owner`` (or every journaled one); threads back to their class.

        Loaders first (the kernel falls back to its default scheduler at
        once), then each journaled thread's attributes, then the threads
        still in SCHED_EXT that targets created while deployed
        (:meth:`TaskMover.sweep`).  Every outcome is in the journal.
        """
        results = []
        with self.lock:
            entries = self.journal.pending_restore(owner=owner, subsystem=JOURNAL_SUBSYSTEM)
            stopped: list[tuple[JournalEntry, str]] = []
            for entry in (e for e in entries if e.kind == KIND):
                loader = self.running.pop(entry.owner, None)
                if loader is not None:
                    done = loader.stop()
                    note = f"loader {done.get('pid')} stopped (exit {done.get('exit')})"
                else:
                    note = self._stop_orphan(entry)
                stopped.append((entry, note))
            state = sched_ext.wait_left_enabled(self.root, 0.8) if stopped else None
            counts: dict[str, int] = {}
            journaled: dict[int, dict[str, Any]] = {}
            for entry in (e for e in entries if e.kind == scx_targets.TASK_KIND):
                if isinstance(entry.prior, dict):
                    journaled.setdefault(int(entry.prior.get("pid", 0)), entry.prior)
                outcome = self.mover.restore(entry)
                counts[outcome] = counts.get(outcome, 0) + 1
            swept = 0
            if (stopped or counts) and not self.running and state != "enabled":
                swept = self.mover.sweep(journaled)
            threads = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            for entry, note in stopped:
                note += f"; sched_ext state {state!r}"
                if counts or swept:
                    note += (f"; threads in SCHED_EXT back in their class: {threads or 'none'}"
                             f"; {swept} more (created while deployed) swept")
                self.journal.mark_restored(entry.id, note)
                _LOGGER.info("sched_ext loader of %s: %s", entry.owner, note)
                results.append({"id": entry.id, "owner": entry.owner, "key": entry.key,
                                "kind": KIND, "outcome": "restored", "note": note})
            if counts and not stopped:
                _LOGGER.info("sched_ext threads of %s: %s; %d swept", owner, threads, swept)
        summary = {"restored": len(results)} if results else {}
        return {"entries": results, "summary": summary, "threads": counts, "swept": swept}

    def _stop_orphan(self, entry: JournalEntry) -> str:
        """Stop a loader a previous daemon started (found by pid+start, else by tag)."""
        new = entry.new if isinstance(entry.new, dict) else {}
        pid, start, tag = new.get("pid"), new.get("start"), str(new.get("tag", ""))
        if not (isinstance(pid, int) and start is not None and tasks.is_alive(pid, start)):
            pid = find_tagged(tag) if tag else None
        if pid is None:
            return "no loader left running"
        _terminate(pid)
        return f"orphaned loader {pid} of the previous daemon stopped"


def find_tagged(tag: str) -> int | None:
    """The process whose environment carries ``SCHEDCP_SCX_TAG=<tag>``, if any."""
    needle = f"{TAG_ENV}={tag}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except OSError:
            continue
    return None


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].startswith(("Z", "X"))


def _terminate(pid: int, timeout: float = 0.8) -> None:
    """SIGTERM ``pid`` (not our child), SIGKILL after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _dead(pid):
                return
            time.sleep(0.01)
