"""One attachment of one catalogue probe: load, attach, detach, read, close.

Synchronous and blocking (the verifier runs inside ``load``); the manager
calls it from worker threads.  Tests and benchmarks use it directly when
they need the attach and detach instants precisely.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from schedcpd.probes.bpfobject import BpfObject
from schedcpd.probes.catalogue import CONFIG, TOP_PROCESSES, ProbeSpec

_LOGGER = logging.getLogger(__name__)


class ProbeSession:
    """A catalogue probe attached for a while.

    ``pid`` restricts the probe to one process (thread group id); None
    watches every task.  ``per_process`` keeps the per-process table (costs
    one hash update per event).  Use as a context manager or call
    :meth:`close`; :meth:`close` is idempotent and safe from any thread.
    """

    def __init__(
        self,
        spec: ProbeSpec,
        bpf_dir: Path,
        pid: int | None = None,
        per_process: bool = True,
    ) -> None:
        self.spec = spec
        self.pid = pid
        self.per_process = per_process
        self._obj = BpfObject(bpf_dir / spec.object_file, spec.object_name)
        self._attached_at: float | None = None
        self._detached_at: float | None = None

    def start(self) -> None:
        """Load (kernel verifier included) and attach every program."""
        self._obj.load(CONFIG.pack(self.pid or 0, 1 if self.per_process else 0))
        self._obj.attach()
        self._attached_at = time.monotonic()
        _LOGGER.debug("probe %s attached (pid filter %s)", self.spec.name, self.pid)

    def stop(self) -> None:
        """Detach the programs; the maps stay readable until :meth:`close`."""
        if self._obj.attached:
            self._obj.detach()
            self._detached_at = time.monotonic()

    @property
    def attached_seconds(self) -> float:
        """How long the programs have been (or were) attached."""
        if self._attached_at is None:
            return 0.0
        end = self._detached_at if self._detached_at is not None else time.monotonic()
        return end - self._attached_at

    def read(self, top: int | None = TOP_PROCESSES) -> dict[str, Any]:
        """The probe's results so far (call after :meth:`stop` for a still picture).

        ``top`` limits the per-process rows to the largest ones; None keeps all.
        """
        result = self.spec.reader(self._obj, top)
        result["probe"] = self.spec.name
        result["pid"] = self.pid
        result["seconds"] = round(self.attached_seconds, 3)
        return result

    def close(self) -> None:
        """Detach and free the object."""
        if self._obj.attached:
            self._detached_at = time.monotonic()
        self._obj.close()

    def __enter__(self) -> ProbeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
