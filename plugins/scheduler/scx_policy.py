"""T2 (sched_ext) scheduler policies: schema, static rules, and the micro-VM stages.

A T2 policy names a BPF scheduler and its parameters (docs/sched_ext.md)::

    [policy]
    name = "scx-vtime"
    description = "..."
    track = "T2"

    [scx]
    scheduler = "vtime"        # a built-in from bpf/scx, or:
    # source = '''...'''       # the scheduler's C source (includes only scx_common.h), or:
    # program = '''...'''      # a scheduler-language program (plugins.scheduler.scxlang)

    [scx.params]               # const volatile globals, set by the loader before load
    slice_us = 5000

    [parameters.slice_us]      # tunable range, as for T1 policies
    field = "scx.params.slice_us"
    min = 500
    max = 20000

    [[group]]                  # optional targets: the partial-switch canary
    name = "service"           # (plugins.scheduler.scx_targets)
    match = { comm = ["nginx"] }

Verifier stages: schema (:func:`validate`), static (:func:`static_check`:
:mod:`plugins.scheduler.scx_rules` on the source, parameter ranges), kernel
(:func:`kernel_check`: load into the guest kernel's BPF verifier without
attaching; a rejection carries the verifier log) and dynamic
(:func:`dynamic_check`: attach in the guest, run a mixed workload, watch
sched_ext's state throughout, detach; a failure carries the guest's dmesg).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from plugins.scheduler import scx_rules, scx_targets, scxlang
from plugins.scheduler.microvm import BuildError, FetchError, GuestResult, MicroVM, job, paths

_LOGGER = logging.getLogger(__name__)

TRACK = "T2"
TOP_KEYS = {"policy", "scx", "parameters", "group", "guard"}
SCX_KEYS = {"scheduler", "source", "program", "params", "switch"}
KINDS = ("scheduler", "source", "program")
POLICY_KEYS = {"name", "description", "subsystem", "track", "workloads", "version", "tags"}
PARAM_KEYS = {"field", "min", "max", "default", "description"}
MAX_SOURCE = 48 * 1024
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Built-in schedulers (bpf/scx/<name>.bpf.c) and the range of each parameter.
BUILTINS: dict[str, dict[str, tuple[int, int]]] = {
    "vtime": {"slice_us": (100, 100_000), "max_lag_slices": (0, 64)},
    "latency": {"slice_us": (100, 100_000), "fast_slice_us": (100, 100_000),
                "short_run_us": (10, 100_000), "wake_interval_us": (100, 10_000_000),
                "fast_burst": (1, 1024), "ljf": (0, 1), "preempt": (0, 1)},
}
_INT_RANGE = (0, 2**32 - 1)
# sched_ext event counters that point at a scheduler mistake (reported, not fatal).
SUSPECT_COUNTERS = ("SCX_EV_SELECT_CPU_FALLBACK", "SCX_EV_DISPATCH_LOCAL_DSQ_OFFLINE",
                    "SCX_EV_INSERT_NOT_OWNED", "SCX_EV_SLICE_DENIED")
_DMESG_LINES = 150
_BOOT_TIMEOUT = 90.0
GUEST_BTF = "/sys/kernel/btf/vmlinux"


def _finding(code: str, message: str, field: str = "scx", severity: str = "error",
             **extra: Any) -> dict[str, Any]:
    return {"code": code, "severity": severity, "field": field, "message": message, **extra}


def is_t2(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` declares the sched_ext track."""
    meta = doc.get("policy")
    return isinstance(meta, dict) and meta.get("track") == TRACK


def source_of(doc: dict[str, Any]) -> tuple[str, str]:
    """(scheduler source text, short name) of a schema-valid T2 policy."""
    scx = doc["scx"]
    if "scheduler" in scx:
        name = scx["scheduler"]
        return (paths.scx_source_dir() / f"{name}.bpf.c").read_text(), name
    if "program" in scx:
        return scxlang.compile_text(scx["program"]).source, "program"
    return scx["source"], "policy"


def params_allowed(doc: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """The parameters a schema-valid T2 policy's scheduler accepts, with their ranges."""
    scx = doc["scx"]
    if "scheduler" in scx:
        return BUILTINS[scx["scheduler"]]
    if "program" in scx:
        return {name: (lo, hi) for name, (lo, hi, _) in
                scxlang.compile_text(scx["program"]).params.items()}
    return {name: scx_rules.slice_bounds(name) or _INT_RANGE
            for name in scx_rules.rodata_params(scx["source"])}


def validate(doc: dict[str, Any], source: str = "<policy>") -> list[dict[str, Any]]:
    """Schema findings for a T2 document (allow-listed keys, types, ranges)."""
    out: list[dict[str, Any]] = []

    def err(code: str, field: str, message: str) -> None:
        out.append({"code": code, "severity": "error", "field": field, "file": source,
                    "message": f"{source}: {field}: {message}"})

    for key in sorted(set(doc) - TOP_KEYS):
        err("unknown-key", key,
            f"unknown key; allowed in a T2 policy: {', '.join(sorted(TOP_KEYS))}")
    meta = doc.get("policy", {})
    if not isinstance(meta, dict):
        meta = {}
    for key in sorted(set(meta) - POLICY_KEYS):
        err("unknown-key", f"policy.{key}",
            f"unknown key; allowed: {', '.join(sorted(POLICY_KEYS))}")
    if not isinstance(meta.get("name"), str) or not _NAME_RE.match(meta["name"]):
        err("type", "policy.name", "lower-case letters, digits and '-', 1..63 chars")
    if not isinstance(meta.get("description"), str) or not meta["description"]:
        err("type", "policy.description", "must be a non-empty string")
    if meta.get("subsystem", "scheduler") != "scheduler":
        err("range", "policy.subsystem", "must be 'scheduler'")
    scx = doc.get("scx")
    if not isinstance(scx, dict):
        err("missing", "scx", "a T2 policy needs an [scx] table (scheduler or source)")
        return out
    for key in sorted(set(scx) - SCX_KEYS):
        err("unknown-key", f"scx.{key}", f"unknown key; allowed: {', '.join(sorted(SCX_KEYS))}")
    if sum(kind in scx for kind in KINDS) != 1:
        err("missing", "scx", "exactly one of scx.scheduler (a built-in), scx.source (C) or "
            "scx.program (the scheduler language)")
        return out
    if "scheduler" in scx and not isinstance(scx["scheduler"], str):
        err("type", "scx.scheduler", f"must be a string: one of {', '.join(sorted(BUILTINS))}")
        return out
    if "scheduler" in scx and scx["scheduler"] not in BUILTINS:
        err("range", "scx.scheduler", f"must be one of {', '.join(sorted(BUILTINS))}")
        return out
    if "source" in scx:
        text = scx["source"]
        if not isinstance(text, str) or not text.strip():
            err("type", "scx.source", "must be the scheduler's C source")
            return out
        if len(text.encode()) > MAX_SOURCE:
            err("range", "scx.source", f"longer than {MAX_SOURCE} bytes")
            return out
    if "program" in scx:
        if not isinstance(scx["program"], str):
            err("type", "scx.program", "must be a scheduler-language program (TOML text)")
            return out
        checked = scxlang.check(scx["program"], source)
        out += checked.findings
        if not checked.ok:
            return out
    params = scx.get("params", {})
    if not isinstance(params, dict):
        err("type", "scx.params", "must be a table of name = integer")
        return out
    allowed = params_allowed(doc)
    for name, value in params.items():
        field = f"scx.params.{name}"
        if name not in allowed:
            err("unknown-key", field, "not a parameter of this scheduler; allowed: "
                + (", ".join(sorted(allowed)) or "none"))
        elif isinstance(value, bool) or not isinstance(value, int):
            err("type", field, f"must be an integer in {allowed[name][0]}..{allowed[name][1]}")
        elif not allowed[name][0] <= value <= allowed[name][1]:
            err("range", field, f"{value} outside allowed range "
                f"{allowed[name][0]}..{allowed[name][1]}")
    _check_parameters(doc, err)
    out += scx_targets.validate(doc, source)
    return out


def _check_parameters(doc: dict[str, Any], err: Any) -> None:
    specs = doc.get("parameters", {})
    if not isinstance(specs, dict):
        err("type", "parameters", "must be a table of [parameters.<name>] tables")
        return
    params = doc["scx"].get("params", {})
    for name, spec in specs.items():
        path = f"parameters.{name}"
        if not isinstance(spec, dict):
            err("type", path, "must be a table")
            continue
        for key in sorted(set(spec) - PARAM_KEYS):
            err("unknown-key", f"{path}.{key}",
                f"unknown key; allowed: {', '.join(sorted(PARAM_KEYS))}")
        field = spec.get("field")
        if not isinstance(field, str) or not field.startswith("scx.params."):
            err("type", f"{path}.field", "must name a parameter: scx.params.<name>")
            continue
        value = params.get(field[len("scx.params."):])
        if value is None:
            err("missing", f"{path}.field", f"{field!r} is not in the policy")
            continue
        lo, hi = spec.get("min"), spec.get("max")
        if not isinstance(value, int):
            continue  # already reported under scx.params
        if isinstance(lo, int) and isinstance(hi, int) and not lo <= value <= hi:
            err("range", field, f"{value} outside parameter range {lo}..{hi}")


def static_check(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Stage 2: the source rules (scx_rules) on the policy's scheduler.

    A program's generated C passes the rules by construction (a finding there
    is a compiler bug, reported as such); its classes' wait bounds come first.
    """
    text, kind = source_of(doc)
    findings = scx_rules.check(text)
    if kind == "program":
        for finding in findings:
            finding["message"] = f"generated C (a scxlang compiler bug): {finding['message']}"
        findings = scxlang.static_findings(doc["scx"]["program"]) + findings
    for name, value in doc["scx"].get("params", {}).items():
        bounds = scx_rules.slice_bounds(name)
        if bounds and not bounds[0] <= value <= bounds[1]:
            findings.append(_finding("slice-out-of-bounds", f"{name} = {value} outside "
                                     f"{bounds[0]}..{bounds[1]}", f"scx.params.{name}"))
    return findings


def _prepare(doc: dict[str, Any], vm: MicroVM) -> tuple[str, dict[str, Path | bytes]]:
    """(guest path of the object, extra files for the job) -- BuildError if it does not build."""
    scx = doc["scx"]
    if "scheduler" in scx:
        return vm.object(scx["scheduler"]), {}
    obj = vm.compile(source_of(doc)[0], "policy")
    return "/job/policy.bpf.o", {"job/policy.bpf.o": obj}


def _vm_failure(stage: str, err: Exception) -> list[dict[str, Any]]:
    if isinstance(err, BuildError):
        return [_finding("compile-failed", f"the scheduler does not compile: {err}",
                         "scx.source", log=err.log)]
    if isinstance(err, FetchError):
        return [_finding("vm-unavailable", f"the micro-VM for the {stage} stage could not be "
                         f"prepared (network?): {err}")]
    return [_finding("vm-unavailable", f"the micro-VM for the {stage} stage failed: {err}")]


def verifier_message(log: str) -> str:
    """The verifier's own complaint from a libbpf load log (one line)."""
    match = re.search(r"-- BEGIN PROG LOAD LOG --\n(.*?)(?:\n\s*\n|-- END PROG LOAD LOG --)",
                      log, re.S)
    if match:
        lines = [ln for ln in match.group(1).splitlines() if ln.strip()]
        if lines:
            prog = re.search(r"prog '(\w+)': BPF program load failed", log)
            return (f"program {prog.group(1)}: " if prog else "") + lines[-1].strip()
    lines = [ln for ln in log.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no log"


def kernel_check(doc: dict[str, Any], vm: MicroVM | None = None) -> list[dict[str, Any]]:
    """Stage 3: load the scheduler into the guest kernel's verifier, without attaching."""
    try:
        vm = (vm or MicroVM()).prepare()
        obj, files = _prepare(doc, vm)
    except (BuildError, FetchError, OSError, RuntimeError) as err:
        return _vm_failure("kernel", err)
    params = doc["scx"].get("params", {})
    script = (job.command("digest", ["sha256sum", obj, GUEST_BTF])
              + job.loader("load", obj, params, attach=False))
    result = vm.run(script, files, timeout=_BOOT_TIMEOUT + 60, boot_timeout=_BOOT_TIMEOUT)
    return judge_load(result, "load") or [artifact_finding(result, obj)]


def judge_load(result: GuestResult, step: str) -> list[dict[str, Any]]:
    """Findings for one load-without-attach step of a guest run (empty: it loaded)."""
    if result.problem():
        return [_finding("vm-failed", result.problem(), console=result.console_tail[-20:])]
    error = result.first(step, "error")
    if error is not None:
        log = str(error.get("log", ""))
        code = "bpf-verifier-rejected" if error.get("stage") == "load" else "load-failed"
        return [_finding(code, f"the guest kernel ({result.kernel}) refused the scheduler: "
                         f"{verifier_message(log) if log else error.get('message')}",
                         log=log, stage=error.get("stage"))]
    if result.first(step, "loaded") is None:
        return [_finding("load-failed", "the loader reported no result",
                         events=result.step(step))]
    return []


def artifact_finding(result: GuestResult, obj: str) -> dict[str, Any]:
    """What the kernel stage loaded: the object's and the kernel BTF's SHA-256 (in the guest).

    The verifier binds them into the token (claim ``artifact``); a deploying
    host refuses another object or another kernel (``ObjectMismatch``).
    """
    digests = {}
    for line in result.output.get("digest", []):
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            digests[parts[1]] = parts[0]
    if obj not in digests or GUEST_BTF not in digests:
        return _finding("no-artifact-digest", "the guest did not report the digests of the "
                        f"object and its kernel BTF: {result.output.get('digest')}")
    return _finding("artifact", f"loaded object sha256 {digests[obj][:16]}... against the "
                    f"BTF of {result.kernel} (sha256 {digests[GUEST_BTF][:16]}...)",
                    severity="info", binding={"object_sha256": digests[obj],
                                              "btf_sha256": digests[GUEST_BTF],
                                              "kernel": result.kernel})


def verify_in_one_boot(docs: list[dict[str, Any]], seconds: float,
                       vm: MicroVM | None = None) -> list[dict[str, list[dict[str, Any]]]]:
    """Stages 3 and 4 for several schema- and static-valid policies in one guest boot.

    Per policy the same steps and judgements as :func:`kernel_check` and
    :func:`dynamic_check` (load without attach, then attach and run the
    workload); a boot costs tens of seconds under TCG, so checks of many
    policies (the language's examples) share one.  Returns per policy
    ``{"kernel": findings, "dynamic": findings}``; the dynamic stage of a
    policy the kernel refused is not run.
    """
    try:
        vm = (vm or MicroVM()).prepare()
        prepared = []
        for k, doc in enumerate(docs):
            obj, files = _prepare(doc, vm)
            if files:
                obj, files = f"/job/p{k}.bpf.o", {f"job/p{k}.bpf.o": files["job/policy.bpf.o"]}
            prepared.append((obj, files))
    except (BuildError, FetchError, OSError, RuntimeError) as err:
        failed = _vm_failure("kernel", err)
        return [{"kernel": failed, "dynamic": []} for _ in docs]
    secs = max(1, round(seconds))
    script, files = "", {}
    for k, (doc, (obj, more)) in enumerate(zip(docs, prepared, strict=True)):
        params = doc["scx"].get("params", {})
        files.update(more)
        script += job.loader(f"load{k}", obj, params, attach=False)
        script += job.loader(f"run{k}", obj, params, timeout_s=secs + 30,
                             command=["/bin/scx_workload", str(secs), "2", "1"])
    result = vm.run(script, files, timeout=_BOOT_TIMEOUT + len(docs) * (secs + 60),
                    boot_timeout=_BOOT_TIMEOUT)
    out = []
    for k, doc in enumerate(docs):
        kernel = judge_load(result, f"load{k}")
        dynamic = [] if kernel else judge_run(result, scx_rules.ops_name(source_of(doc)[0])
                                              or "", f"run{k}")
        out.append({"kernel": kernel, "dynamic": dynamic})
    return out


def dynamic_check(doc: dict[str, Any], seconds: float,
                  vm: MicroVM | None = None) -> list[dict[str, Any]]:
    """Stage 4: attach in the guest, run a workload for ``seconds``, check, detach."""
    try:
        vm = (vm or MicroVM()).prepare()
        obj, files = _prepare(doc, vm)
        text, _ = source_of(doc)
    except (BuildError, FetchError, OSError, RuntimeError) as err:
        return _vm_failure("dynamic", err)
    secs = max(1, round(seconds))
    script = job.loader("run", obj, doc["scx"].get("params", {}), timeout_s=secs + 30,
                        command=["/bin/scx_workload", str(secs), "2", "1"])
    result = vm.run(script, files, timeout=_BOOT_TIMEOUT + secs + 90,
                    boot_timeout=_BOOT_TIMEOUT)
    return judge_run(result, scx_rules.ops_name(text) or "", "run")


def judge_run(result: GuestResult, ops: str, step: str) -> list[dict[str, Any]]:
    """Findings for one attach/workload/detach step of a guest run."""
    findings: list[dict[str, Any]] = []
    if result.problem():
        findings.append(_finding("vm-failed", result.problem()))
    events = result.step(step)
    attached = result.first(step, "attached")
    error = result.first(step, "error")
    if attached is None:
        detail = error.get("message", "") if error else "no report from the loader"
        findings.append(_finding("attach-failed", f"the scheduler did not attach: {detail}",
                                 log=error.get("log", "") if error else ""))
    else:
        if attached.get("state") != "enabled":
            findings.append(_finding("not-enabled", f"sched_ext state after attach is "
                                     f"{attached.get('state')!r}, not 'enabled'"))
        if ops and attached.get("ops") != ops:
            findings.append(_finding("ops-mismatch", f"root/ops names {attached.get('ops')!r}, "
                                     f"not {ops!r}"))
        done_at = next((i for i, e in enumerate(events) if e.get("event") == "workload_done"),
                       len(events))
        for event in events[:done_at]:
            if event.get("event") == "state":
                findings.append(_finding("state-left-enabled", f"sched_ext state became "
                                         f"{event.get('state')!r} {event.get('ms')} ms into "
                                         "the workload"))
        for event in events:
            if event.get("event") == "exited" and event.get("error"):
                findings.append(_finding("ejected", f"the kernel ejected the scheduler: "
                                         f"{event.get('reason')}: {event.get('msg')}"))
        if error is not None and error.get("stage") == "workload":
            findings.append(_finding("workload-failed", str(error.get("message"))))
        done = result.first(step, "workload_done")
        if done is None:
            findings.append(_finding("workload-incomplete", "the workload did not complete "
                                     "under the scheduler"))
        elif done.get("status") != 0:
            findings.append(_finding("workload-failed", f"the workload exited with status "
                                     f"{done.get('status')}"))
        findings += _workload_findings(events)
        findings += _counter_findings(result.first(step, "events"))
        stats = result.first(step, "stats")
        if stats is not None and len(stats) > 1:
            findings.append(_finding("scheduler-stats", "the scheduler's own counters (.bss)",
                                     severity="info",
                                     stats={k: v for k, v in stats.items() if k != "event"}))
        detached = result.first(step, "detached")
        if detached is None or detached.get("state") != "disabled":
            findings.append(_finding("not-disabled", "after detach sched_ext state is "
                                     f"{(detached or {}).get('state')!r}, not 'disabled'"))
    if any(f["severity"] == "error" for f in findings):
        first = next(f for f in findings if f["severity"] == "error")
        first["dmesg"] = result.dmesg[-_DMESG_LINES:]
    return findings


def _workload_findings(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for event in events:
        if event.get("event") != "workload":
            continue
        try:
            report = json.loads(str(event.get("line", "")))
        except ValueError:
            continue
        if isinstance(report, dict) and "progress" in report:
            if not report["progress"]:
                return [_finding("no-progress", f"a workload thread made no progress: {report}")]
            return [_finding("workload", "workload under the scheduler (TCG-emulated times)",
                             severity="info", report=report)]
    return []


def _counter_findings(event: dict[str, Any] | None) -> list[dict[str, Any]]:
    if event is None:
        return [_finding("no-events", "sched_ext event counters were not reported",
                         severity="warning")]
    out = []
    if int(event.get("nr_rejected", 0)):
        out.append(_finding("tasks-rejected", f"{event['nr_rejected']} tasks were rejected "
                            "from sched_ext (nr_rejected)"))
    counters = event.get("counters", {})
    suspect = {k: v for k, v in counters.items() if k in SUSPECT_COUNTERS and v}
    if suspect:
        out.append(_finding("scx-events", f"sched_ext counted scheduler mistakes: {suspect}",
                            severity="warning"))
    out.append(_finding("scx-counters", "sched_ext event counters during the run",
                        severity="info", counters=counters))
    return out
