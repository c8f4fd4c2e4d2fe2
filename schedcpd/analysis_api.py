"""The observation part of the Manager API: summaries, profiling, feedback.

Tier 1 (``GetSummary``) is for everyone (observe).  Tier 2 — ``perf stat``
and catalogue BPF probes — costs the host something and reveals other
users' processes in detail, so it needs the submit action (agents and
operators), and it is time-boxed, bounded in concurrency and rate-limited
per caller by the engine.  Tier 3 (``GetFeedback``) compares a
deployment's baseline window with the time since.
"""

from __future__ import annotations

import time

from schedcpd.analysis import WorkloadAnalyzer
from schedcpd.api import Caller, method, to_json
from schedcpd.const import ACTION_OBSERVE, ACTION_SUBMIT
from schedcpd.errors import InvalidArgument, NotSupported
from schedcpd.probes import ProbeManager

FEEDBACK_BASELINE_SECONDS = 60.0



def _monotonic(wall: float) -> float:
    """A wall-clock time on the monotonic clock the sampler uses."""
    return time.monotonic() - (time.time() - wall)


class AnalysisAPI:
    """Observation methods; the host sets ``analyzer`` and ``probes``."""

    analyzer: WorkloadAnalyzer | None = None
    probes: ProbeManager | None = None

    def _analyzer(self) -> WorkloadAnalyzer:
        if self.analyzer is None:
            raise NotSupported("workload analysis is not available in this daemon")
        return self.analyzer

    def _probes(self) -> ProbeManager:
        if self.probes is None:
            raise NotSupported("BPF probes are not available in this daemon")
        return self.probes

    @method(ACTION_OBSERVE, in_args=(("detail", "s"),), out_args=(("summary", "s"),))
    async def GetSummary(self, caller: Caller, detail: str) -> str:
        """Workload summary JSON over the sampler's window; detail: brief, normal or full."""
        return to_json(await self._analyzer().summary_async(detail or "brief"))

    @method(ACTION_SUBMIT, in_args=(("pid", "i"), ("cgroup", "s"), ("seconds", "d")),
            out_args=(("result", "s"),), audited=True)
    async def RunPerfStat(self, caller: Caller, pid: int, cgroup: str, seconds: float) -> str:
        """``perf stat`` for a pid (0: none), a cgroup ("" none) or the system, time-boxed."""
        return to_json(await self._analyzer().perf_stat(pid or None, cgroup or None, seconds))

    @method(ACTION_OBSERVE, out_args=(("probes", "s"),))
    def ListProbes(self, caller: Caller) -> str:
        """The catalogue of prebuilt BPF probes, with availability on this kernel."""
        return to_json(self._probes().catalogue())

    @method(ACTION_SUBMIT, in_args=(("name", "s"), ("seconds", "d"), ("pid", "i")),
            out_args=(("result", "s"),), audited=True)
    async def RunProbe(self, caller: Caller, name: str, seconds: float, pid: int) -> str:
        """Attach a catalogue probe for ``seconds`` (capped), optionally for one pid (0: all)."""
        # Rate-limited per uid (a client could reconnect for a new unique name);
        # detached when this connection leaves the bus.
        return to_json(await self._probes().run(name, seconds, caller.sender, pid or None,
                                               rate_key=f"uid:{caller.uid}"))

    @method(ACTION_OBSERVE, in_args=(("deployment_id", "s"),), out_args=(("feedback", "s"),))
    async def GetFeedback(self, caller: Caller, deployment_id: str) -> str:
        """Baseline vs. after-deployment deltas for a deployment's targets, with spread."""
        return await self._feedback(deployment_id, [])

    @method(ACTION_OBSERVE, in_args=(("deployment_id", "s"), ("pids", "s")),
            out_args=(("feedback", "s"),))
    async def GetFeedbackFor(self, caller: Caller, deployment_id: str, pids: str) -> str:
        """GetFeedback, plus processes the deployment does not target (comma-separated pids).

        For a policy that helps processes by acting on others (io-protect-reads
        lowers a writer for the sake of a reader): the readers' figures over
        the same two windows.
        """
        extra = []
        for part in (p.strip() for p in pids.split(",")):
            if not part:
                continue
            if not part.isdigit() or not 0 < int(part) < 2**22:
                raise InvalidArgument(f"pids: {part!r} is not a process id")
            extra.append(int(part))
        if len(extra) > 64:
            raise InvalidArgument(f"pids: {len(extra)} given, at most 64")
        return await self._feedback(deployment_id, extra)

    async def _feedback(self, deployment_id: str, extra: list[int]) -> str:
        deployer = getattr(self, "deployer", None)
        if deployer is None:
            raise NotSupported("deployment is not available in this daemon")
        dep = await deployer.get(deployment_id)
        events = dep["events"]
        applied = next((e["time"] for e in events if e["state"] == "canary"), None)
        if applied is None:
            raise InvalidArgument(f"deployment {deployment_id} never applied anything")
        ended = next((e["time"] for e in events if e["state"] in ("reverted", "failed")),
                     time.time())
        pids = sorted({p for pids in dep["targets"].values() for p in pids} | set(extra))[:64]
        # The minute before the first write is the baseline (the sampler keeps history).
        result = self._analyzer().feedback(
            (_monotonic(applied - FEEDBACK_BASELINE_SECONDS), _monotonic(applied)),
            (_monotonic(applied), _monotonic(ended)), pids or None)
        return to_json({"deployment": deployment_id, "state": dep["state"], **result})
