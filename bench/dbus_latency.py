"""GetStatus round-trip latency and a 1000-call burst against a running schedcpd.

    python bench/dbus_latency.py [--address unix:path=...] [--calls 1000] [--reps 5]

Without --address it starts its own private system-like bus and daemon (the
same way the tests do).  Sequential: ``--calls`` GetStatus round trips per
repetition, p50/p99 per repetition and pooled, alternating with the same
number of calls to a minimal dbus-fast service (bench/floor_service.py) on
the same bus: the floor any Python D-Bus service has here, measured in the
same run.  Burst: ``--burst`` concurrent calls from one connection; counts of
answers, our Busy errors and the bus's own LimitsExceeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dbus_fast import Message, MessageType

from schedcpd.const import BUS_NAME, MANAGER_INTERFACE, OBJECT_PATH
from schedcpd.dbus.bus import MessageBus
from tests.harness import PrivateBus, SchedcpdProcess


def _status_call() -> Message:
    return Message(destination=BUS_NAME, path=OBJECT_PATH, interface=MANAGER_INTERFACE,
                   member="GetStatus")


def _floor_call() -> Message:
    return Message(destination="org.schedcp.BenchFloor", path="/org/schedcp/BenchFloor",
                   interface="org.schedcp.BenchFloor", member="Get")


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _sequential(bus: MessageBus, make: type | object, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        msg = make()  # type: ignore[operator]
        t0 = time.perf_counter()
        reply = await bus.call(msg)
        out.append(time.perf_counter() - t0)
        assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, reply
    return out


async def _burst(bus: MessageBus, n: int) -> dict[str, int]:
    replies = await asyncio.gather(*(bus.call(_status_call()) for _ in range(n)))
    counts: dict[str, int] = {}
    for r in replies:
        key = "ok" if r.message_type == MessageType.METHOD_RETURN else r.error_name
        counts[key] = counts.get(key, 0) + 1
    return counts


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


async def run(address: str, calls: int, reps: int, burst: int) -> dict[str, object]:
    bus = await MessageBus(bus_address=address).connect()
    await _sequential(bus, _status_call, 200)  # warm caches on both sides
    status_all: list[float] = []
    floor_all: list[float] = []
    per_rep = []
    for rep in range(reps):
        # Alternate which goes first so drift in machine load hits both alike.
        order = [(_status_call, status_all), (_floor_call, floor_all)]
        if rep % 2:
            order.reverse()
        rep_result = {}
        for make, pool in order:
            samples = await _sequential(bus, make, calls)
            pool.extend(samples)
            rep_result["status" if make is _status_call else "floor"] = {
                "p50_us": round(_pct(samples, 0.5) * 1e6, 1),
                "p99_us": round(_pct(samples, 0.99) * 1e6, 1),
            }
        rep_result["loadavg"] = _loadavg()
        per_rep.append(rep_result)
    bursts = [await _burst(bus, burst) for _ in range(3)]
    # The daemon must still answer after the bursts.
    after = await bus.call(_status_call())
    bus.disconnect()
    p50_s, p99_s = _pct(status_all, 0.5), _pct(status_all, 0.99)
    p50_f = _pct(floor_all, 0.5)
    return {
        "calls_per_rep": calls,
        "reps": per_rep,
        "getstatus_p50_us": round(p50_s * 1e6, 1),
        "getstatus_p99_us": round(p99_s * 1e6, 1),
        "getstatus_mean_us": round(statistics.fmean(status_all) * 1e6, 1),
        "bus_floor_p50_us": round(p50_f * 1e6, 1),
        "ratio_p50_to_floor": round(p50_s / p50_f, 2),
        "burst_size": burst,
        "bursts": bursts,
        "alive_after_bursts": after is not None and after.message_type == MessageType.METHOD_RETURN,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--burst", type=int, default=1000)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        address = args.address
        if not address:
            address = stack.enter_context(PrivateBus()).address
            stack.enter_context(SchedcpdProcess(address))
        floor = subprocess.Popen([sys.executable, str(Path(__file__).with_name("floor_service.py")),
                                  address], stdout=subprocess.PIPE, text=True)
        stack.callback(floor.terminate)
        assert floor.stdout is not None and floor.stdout.readline().strip() == "ready"
        result = asyncio.run(run(address, args.calls, args.reps, args.burst))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
