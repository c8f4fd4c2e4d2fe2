"""Command line for the micro-VM: prepare the cache, or try a scheduler in the guest.

    python -m plugins.scheduler.microvm prepare
    python -m plugins.scheduler.microvm try vtime slice_us=3000 [--seconds 3]
    python -m plugins.scheduler.microvm host [--cpus N] [--memory MB] [-- CMD ...]
    python -m plugins.scheduler.microvm systemd [--deb FILE] [-- CMD ...]

``prepare`` downloads and builds what is missing (run it once as root, e.g.
before starting a sandboxed schedcpd) and prints what the cache holds.
``try`` boots the guest, attaches the scheduler, runs the verifier's
workload under it, and prints the loader's events as JSON.  ``host``
boots this machine's schedcp on the sched_ext guest kernel (system bus,
schedcpd), runs CMD there as root once schedcpd owns its bus name, prints
CMD's output as it comes and a summary on stderr, and
exits with CMD's status (3 when the guest host failed; the error is named).
``systemd`` boots the Debian 12 guest with systemd as PID 1
(:mod:`systemd_guest`), installs FILE there with ``apt install`` when
given, runs CMD as root, prints its output and the boot figures, and exits
the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from plugins.scheduler.microvm import MicroVM, host, job, systemd_guest


def _host(vm: MicroVM, args: argparse.Namespace, command: list[str]) -> int:
    guest_host = host.GuestHost(vm, cpus=args.cpus, memory_mb=args.memory).prepare()
    script = host.command_script(command) if command else ""

    def show(step: str, text: str) -> None:
        if step == host.COMMAND_STEP:
            print(text, flush=True)

    result = guest_host.run(script, timeout=args.timeout, boot_timeout=args.boot_timeout,
                            on_output=show)
    info = host.summary(result)
    print(json.dumps(info, indent=1), file=sys.stderr)
    if info["error"]:
        print(f"error: {info['problem']}", file=sys.stderr)
        return 3
    status = info["command_status"]
    return int(status) if command and status is not None else 0


def _systemd(args: argparse.Namespace, command: list[str]) -> int:
    files: dict[str, Path | bytes] = {}
    script = f". {systemd_guest.LIB}\n"
    if args.deb:
        deb = Path(args.deb)
        files[deb.name] = deb
        script += f"cd /run/job && run install apt-get install -y ./{deb.name}; cd /tmp\n"
    script += host.command_script(command) if command else ""

    def show(step: str, text: str) -> None:
        print(f"{step}: {text}" if step != host.COMMAND_STEP else text, flush=True)

    result = systemd_guest.SystemdGuest().run(script, files, timeout=args.timeout,
                                              on_output=show)
    info = systemd_guest.summary(result)
    print(json.dumps(info, indent=1), file=sys.stderr)
    if info["error"]:
        print(f"error: {info['problem']}", file=sys.stderr)
        return 3
    exit_event = result.first(host.COMMAND_STEP, "exit")
    return int(exit_event["status"]) if command and exit_event else 0


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m plugins.scheduler.microvm",
                                     description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="download and build what is missing")
    trial = sub.add_parser("try", help="attach a built-in scheduler in the guest")
    trial.add_argument("scheduler")
    trial.add_argument("params", nargs="*", help="name=integer")
    trial.add_argument("--seconds", type=int, default=3)
    guest_host = sub.add_parser("host", help="boot schedcp on the sched_ext guest kernel "
                                "and run -- CMD there")
    guest_host.add_argument("--cpus", type=int, default=2)
    guest_host.add_argument("--memory", type=int, default=host.DEFAULT_MEMORY_MB,
                            help="guest memory in MB (default %(default)s)")
    guest_host.add_argument("--timeout", type=float, default=600.0,
                            help="seconds before the guest is killed (default %(default)s)")
    guest_host.add_argument("--boot-timeout", type=float, default=120.0)
    booted = sub.add_parser("systemd", help="boot the Debian guest with systemd as PID 1 "
                            "and run -- CMD there")
    booted.add_argument("--deb", help="a .deb to install with apt first")
    booted.add_argument("--timeout", type=float, default=900.0)
    argv = sys.argv[1:]
    command: list[str] = []
    if "--" in argv:
        command, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
    args = parser.parse_args(argv)
    if command and args.command not in ("host", "systemd"):
        parser.error("-- CMD is only for the host and systemd commands")
    if args.command == "host" and (args.cpus < 1 or args.memory < 256):
        parser.error(f"--cpus must be >= 1 and --memory >= 256 (got {args.cpus}, {args.memory})")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "systemd":
        sys.exit(_systemd(args, command))
    vm = MicroVM().prepare()
    assert vm.kernel is not None and vm.artifacts is not None and vm.tools is not None
    if args.command == "prepare":
        print(json.dumps({"cache": str(vm.cache), "kernel": vm.kernel.version,
                          "clang": vm.tools.clang_version, "libbpf": vm.tools.libbpf_version,
                          "build": str(vm.artifacts.directory),
                          "schedulers": sorted(vm.artifacts.objects),
                          "binaries": sorted(vm.artifacts.binaries)}, indent=1))
        return
    if args.command == "host":
        sys.exit(_host(vm, args, command))
    params = {}
    for item in args.params:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"parameter {item!r} is not name=integer")
        params[name] = int(value, 0)
    script = job.loader("try", vm.object(args.scheduler), params, timeout_s=args.seconds + 30,
                        command=["/bin/scx_workload", str(args.seconds), "2", "1"])
    result = vm.run(script, timeout=120 + args.seconds)
    print(json.dumps({"accel": result.accel, "kernel": result.kernel,
                      "problem": result.problem(), "events": result.step("try")}, indent=1))


if __name__ == "__main__":
    main()
