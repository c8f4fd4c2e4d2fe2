"""One long-lived fio job, logged as one JSON record per second.

    python -m schedcp_bench.workloads.fio_stream --log FILE [--dev-stat PATH] -- FIO-ARGS...

fio runs once for the whole session with ``--status-interval=1
--output-format=json+``: every second it prints its cumulative figures,
with the completion-latency histogram (``clat_ns.bins``).  The difference
of two consecutive histograms is exactly the histogram of the I/Os that
completed in between, so each second becomes one record
``{"start", "end", "read_p50_us", "read_p99_us", "read_iops",
"write_p50_us", "write_p99_us", "write_iops"}`` (``time.monotonic()``
seconds, the clock of :func:`schedcp_bench.workload.now`), plus
``dev_write_mib_s`` -- what the whole device wrote per second, from
``/sys/block/<dev>/stat`` -- when ``--dev-stat`` is given.  The fio process
(and its job process) live as long as this one: their pids, which a policy
binds, do not change from one unit to the next.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

Hist = dict[int, int]


def _hist(side: dict[str, Any]) -> tuple[int, Hist]:
    """(total I/Os, completion-latency histogram in ns) of one direction."""
    bins = side.get("clat_ns", {}).get("bins", {}) or {}
    return int(side.get("total_ios", 0)), {int(k): int(v) for k, v in bins.items()}


def percentile(hist: Hist, q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram {value: count}, or None when empty."""
    total = sum(hist.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def interval(prev: dict[str, Any], cur: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The figures of the I/Os completed between two cumulative fio status reports."""
    out: dict[str, Any] = {}
    for side in ("read", "write"):
        n0, h0 = _hist(prev["jobs"][0][side])
        n1, h1 = _hist(cur["jobs"][0][side])
        diff = {k: v - h0.get(k, 0) for k, v in h1.items() if v > h0.get(k, 0)}
        p50, p99 = percentile(diff, 0.5), percentile(diff, 0.99)
        out[f"{side}_p50_us"] = None if p50 is None else p50 / 1000
        out[f"{side}_p99_us"] = None if p99 is None else p99 / 1000
        out[f"{side}_iops"] = max(0, n1 - n0) / max(seconds, 1e-6)
    return out


def sectors_written(stat: Path) -> int:
    """Sectors written so far by a block device (field 7 of /sys/block/<dev>/stat)."""
    return int(stat.read_text().split()[6])


def documents(stream: Any) -> Any:
    """Each JSON document fio prints, as it comes (they follow one another on stdout)."""
    decoder = json.JSONDecoder()
    buf = ""
    for line in stream:
        buf += line
        start = buf.find("{")
        if start < 0:
            buf = ""
            continue
        try:
            doc, end = decoder.raw_decode(buf, start)
        except json.JSONDecodeError:
            continue  # not complete yet
        buf = buf[end:]
        yield doc


def main(argv: list[str] | None = None) -> int:
    """Run fio and log one record per status report until it ends."""
    ap = argparse.ArgumentParser(prog="schedcp_bench.workloads.fio_stream")
    ap.add_argument("--log", required=True)
    ap.add_argument("--dev-stat", type=Path)
    ap.add_argument("fio", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    fio = args.fio[1:] if args.fio[:1] == ["--"] else args.fio
    if not fio:
        ap.error("no fio command")
    proc = subprocess.Popen([*fio, "--status-interval=1", "--output-format=json+"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    prev: tuple[float, dict[str, Any], int] | None = None
    with open(args.log, "a", buffering=1) as log:
        for doc in documents(proc.stdout):
            now = time.monotonic()
            written = sectors_written(args.dev_stat) if args.dev_stat else 0
            if not doc.get("jobs"):
                continue
            if prev is not None:
                record = {"start": prev[0], "end": now,
                          **interval(prev[1], doc, now - prev[0])}
                if args.dev_stat:
                    record["dev_write_mib_s"] = ((written - prev[2]) * 512 / 2**20
                                                 / max(now - prev[0], 1e-6))
                log.write(json.dumps(record) + "\n")
            prev = (now, doc, written)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
