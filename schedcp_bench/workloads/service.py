"""The shape four workloads share: a network service, its load driver, a CPU hog.

memcached, http-python, nginx and redis differ in how their server starts
and which program drives it; the rest is one recipe.  The server comes up
first (:func:`~schedcp_bench.workloads.common.wait_ready` on its address),
then a ``t1_hog`` with one spinning thread per CPU (the batch load), then the
looping load driver.  Roles: the server and the driver are ``latency``, the
hog is ``batch`` and ``noisy``.  Figures: each metric of the subclass's
``figures`` is the median over the window's driver records (in the records'
unit, times a factor), plus the hog's rate as ``batch_rate``.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from schedcp_bench.workload import Session
from schedcp_bench.workloads.common import (
    BenchWorkload,
    good,
    hog_figures,
    median,
    ncpu,
    wait_ready,
)


@dataclass
class Service:
    """A started server: its process, its name in errors, where it answers."""

    proc: subprocess.Popen[bytes]
    what: str
    address: str | tuple[str, int]
    #: what the session keeps about it (``session.extra``)
    extra: dict[str, Any] = field(default_factory=dict)


class ServiceBesideHog(BenchWorkload):
    """A service under a looping load driver, beside a CPU hog (one thread per CPU)."""

    #: metric name -> (the driver records' key, factor to the metric's unit)
    figures: ClassVar[dict[str, tuple[str, float]]] = {}

    def serve(self, session: Session, seed: int) -> Service:
        """Start the server in ``session`` (not yet answering)."""
        raise NotImplementedError

    def driver(self, session: Session, service: Service, seed: int) -> tuple[list[str], str]:
        """The load driver's argv and its output parser (``module:function``)."""
        raise NotImplementedError

    def start(self, run_dir: Path, seed: int) -> Session:
        """Start the server, the hog and (once the server answers) the load driver."""
        session = self.new_session(run_dir)
        service = self.serve(session, seed)
        wait_ready(session, service.proc, service.what, service.address)
        hog = self.spawn_hog(session, ncpu())
        argv, parser = self.driver(session, service, seed)
        driver = self.spawn_driver(session, argv, parser)
        session.roles = {"latency": [service.proc.pid, driver.pid], "batch": [hog.pid],
                         "noisy": [hog.pid]}
        session.extra.update(service.extra)
        return session

    def measure(self, session: Session, t0: float, t1: float) -> dict[str, float | None]:
        """Median driver figures over the window and the hog's rate."""
        keys = {key for key, _ in self.figures.values()}
        recs = good(session.records(t0, t1), *sorted(keys))
        out: dict[str, float | None] = {}
        for metric, (key, factor) in self.figures.items():
            value = median(r[key] for r in recs)
            out[metric] = None if value is None else value * factor
        out["batch_rate"] = hog_figures(session.dir / "hog.jsonl", t0, t1)["rate"]
        return out
