"""Command line for the micro-VM: prepare the cache, or try a scheduler in the guest.

    python -m plugins.scheduler.microvm prepare
    python -m plugins.scheduler.microvm try vtime slice_us=3000 [--seconds 3]

``prepare`` downloads and builds what is missing (run it once as root, e.g.
before starting a sandboxed schedcpd) and prints what the cache holds.
``try`` boots the guest, attaches the scheduler, runs the verifier's
workload under it, and prints the loader's events as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging

from plugins.scheduler.microvm import MicroVM, job


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
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    vm = MicroVM().prepare()
    assert vm.kernel is not None and vm.artifacts is not None and vm.tools is not None
    if args.command == "prepare":
        print(json.dumps({"cache": str(vm.cache), "kernel": vm.kernel.version,
                          "clang": vm.tools.clang_version, "libbpf": vm.tools.libbpf_version,
                          "build": str(vm.artifacts.directory),
                          "schedulers": sorted(vm.artifacts.objects),
                          "binaries": sorted(vm.artifacts.binaries)}, indent=1))
        return
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
