"""Shell snippets for the guest's ``/job/run.sh`` (steps report with a marker prefix)."""

from __future__ import annotations

import shlex

from plugins.scheduler.microvm.initramfs import MARK

LOADER = "/bin/scx_loader"
HEADER = "#!/bin/sh\nexport PATH=/bin\ncd /tmp\n"


def _step_ok(step: str) -> None:
    if not step.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"bad step name {step!r}")


def event(step: str, name: str, **fields: int | str) -> str:
    """A line that reports one event (values must be plain words or integers)."""
    _step_ok(step)
    body = ",".join([f'\\"event\\":\\"{name}\\"'] + [
        f'\\"{k}\\":{v}' if isinstance(v, int) else f'\\"{k}\\":\\"{v}\\"'
        for k, v in fields.items()])
    return f'echo "{MARK}:{step} {{{body}}}"\n'


def loader(step: str, obj: str, params: dict[str, int], *, attach: bool = True,
           command: list[str] | None = None, timeout_s: int = 60,
           duration_s: int | None = None, monitor_ms: int = 50) -> str:
    """Run the loader for one step (``--no-attach`` when ``attach`` is false)."""
    _step_ok(step)
    argv = [LOADER, "--prefix", f"{MARK}:{step}", "--monitor-ms", str(monitor_ms),
            "--timeout-s", str(timeout_s)]
    if not attach:
        argv.append("--no-attach")
    if duration_s is not None:
        argv += ["--duration-s", str(duration_s)]
    argv.append(obj)
    argv += [f"{k}={int(v)}" for k, v in sorted(params.items())]
    if command:
        argv += ["--", *command]
    line = " ".join(shlex.quote(a) for a in argv)
    return f"{line}\n" + event(step, "loader_exit", status="$?").replace(
        '\\"$?\\"', "$?")


def command(step: str, argv: list[str]) -> str:
    """Run a plain command (no scheduler change); its output as @@OUT lines."""
    _step_ok(step)
    line = " ".join(shlex.quote(a) for a in argv)
    return (f"{event(step, 'start')}{line} > /tmp/{step}.out 2>&1\nrc=$?\n"
            f"sed 's/^/@@OUT:{step} /' /tmp/{step}.out\n"
            + event(step, "exit", status="$rc").replace('\\"$rc\\"', "$rc"))
