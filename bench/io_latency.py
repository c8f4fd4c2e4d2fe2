"""Random-read latency beside a bulk sequential writer: default vs an io policy.

The issue 21 workload: fio reads 4 KiB at random, queue depth 1 (psync),
beside a 1 MiB sequential direct writer at queue depth 16 (libaio), on one
device.  The hand measurement in the issue was on vda; this benchmark never
touches vda's settings: it runs on a scratch loop device (direct I/O to a
prefilled file in a temp dir, whose own queue the policy's ``[[device]]``
table is aimed at) made and removed here (plugins.io.sandbox).

Each round starts the writer (its own fio process), lets it run
--settle seconds, applies the policy through the io plugin's real applier and
journal (the writer's group matched by its pid, the device by the loop
device's name) or nothing (default), runs the reader for --seconds, reads the
writer's throughput from the loop device's /sys/block/<dev>/stat over the
reader's window, stops the writer and restores.  Rounds alternate default /
policy, so drift of the loaded host falls on both; medians are reported with
the load average of each round.

A reader at queue depth 1 reads as fast as its latency allows, so under a
policy that cuts its latency it also takes more of the device: with
--reader-iops N both configurations read at most N per second, and the
writer's loss is measured at the same read load.

Usage: python bench/io_latency.py [--rounds 4] [--seconds 8] [--policy FILE]
       [--reader-iops N]
Run as root.  Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))  # the checkout's code, not an installed copy

from plugins.io import applier, blockdev, ioprio  # noqa: E402
from plugins.io.actuator import Actuator  # noqa: E402
from plugins.io.sandbox import ScratchDevice, fio, stop  # noqa: E402
from schedcpd.plugin_api import Journal  # noqa: E402

READER = {"name": "reader", "rw": "randread", "bs": "4k", "iodepth": 1, "ioengine": "psync"}
WRITER = ["--name=writer", "--rw=write", "--bs=1M", "--iodepth=16", "--ioengine=libaio",
          "--direct=1", "--time_based=1", "--runtime=3600"]


def _sectors_written(dev: str) -> int:
    return int((blockdev.SYSFS / dev / "stat").read_text().split()[6])


def _policy_for(path: Path, dev: str, writer_pid: int) -> dict[str, Any]:
    doc = tomllib.loads(path.read_text())
    for table in doc.get("device", []):
        table["name"] = dev
    for group in doc.get("group", []):
        group["match"] = {"pids": [writer_pid]}
        for rule in group.get("throttle", []):
            rule["device"] = dev
    return doc


def one_round(dev: ScratchDevice, doc_path: Path | None, seconds: float, settle: float,
              journal: Journal, reader_iops: int = 0) -> dict[str, Any]:
    writer = subprocess.Popen(["fio", f"--filename={dev.path}", *WRITER],
                              stdout=subprocess.DEVNULL)
    owner = f"bench-{time.monotonic_ns()}"
    actuator = Actuator(journal)
    try:
        deadline = time.monotonic() + 30
        while len(ioprio.Selector([], [writer.pid]).scan()) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("fio writer did not start its job")
            time.sleep(0.05)
        if doc_path is not None:
            plan = applier.plan(_policy_for(doc_path, dev.name, writer.pid), owner, None)
            applier.apply(actuator, plan, owner)
        time.sleep(settle)
        load = Path("/proc/loadavg").read_text().split()[0]
        t0, s0 = time.monotonic(), _sectors_written(dev.name)
        job = dict(READER, rate_iops=reader_iops) if reader_iops else READER
        reader = fio([job], dev.path, seconds)["reader"]
        t1, s1 = time.monotonic(), _sectors_written(dev.name)
    finally:
        stop(writer)
        actuator.restore(owner)
    return {"p50_us": reader["clat_p50_us"], "p99_us": reader["clat_p99_us"],
            "read_iops": reader["read_iops"],
            "writer_mib_s": (s1 - s0) * 512 / 2**20 / (t1 - t0), "load1": float(load)}


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per configuration")
    parser.add_argument("--seconds", type=float, default=8.0, help="reader run per round")
    parser.add_argument("--settle", type=float, default=1.0, help="writer runs alone first")
    parser.add_argument("--size-mib", type=int, default=1024, help="scratch device size")
    parser.add_argument("--reader-iops", type=int, default=0,
                        help="cap the reader's rate (0: as fast as it can), so the writer's "
                        "loss is not the reader's gain")
    parser.add_argument("--policy", type=Path, default=_ROOT / "policies/io-protect-reads.toml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="io-bench-") as tmp, \
            ScratchDevice(args.size_mib, parent=Path(tmp)) as dev:
        subprocess.run(["fio", "--name=fill", f"--filename={dev.path}", "--rw=write",
                        "--bs=1M", "--direct=1", f"--size={args.size_mib}M"],
                       check=True, capture_output=True)
        journal = Journal(Path(tmp) / "journal.db")
        alone = fio([READER], dev.path, args.seconds)["reader"]
        rows: dict[str, list[dict[str, Any]]] = {"default": [], "policy": []}
        for i in range(args.rounds * 2):
            label = "default" if i % 2 == 0 else "policy"
            rows[label].append(one_round(dev, None if label == "default" else args.policy,
                                         args.seconds, args.settle, journal,
                                         args.reader_iops))
            print(json.dumps({label: rows[label][-1]}), file=sys.stderr, flush=True)
        left = journal.pending_restore()
        journal.close()
    d, p = rows["default"], rows["policy"]
    out = {
        "device": f"loop device over a prefilled {args.size_mib} MiB file (direct I/O)",
        "policy": str(args.policy), "rounds": args.rounds, "seconds": args.seconds,
        "reader_iops_cap": args.reader_iops,
        "reader_alone": {"p50_us": alone["clat_p50_us"], "p99_us": alone["clat_p99_us"]},
        "median": {label: {k: _median(r, k) for k in r[0]} for label, r in rows.items()},
        "p50_ratio": _median(d, "p50_us") / _median(p, "p50_us"),
        "p99_ratio": _median(d, "p99_us") / _median(p, "p99_us"),
        "writer_loss_pct": 100 * (1 - _median(p, "writer_mib_s") / _median(d, "writer_mib_s")),
        "goal": {"p50_ratio": 5.0, "p99_ratio": 3.0, "writer_loss_pct": 15.0},
        "rounds_detail": rows, "journal_left_open": len(left)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
