"""Fixtures for the micro-VM tests: one prepared guest per session.

The first run on a machine downloads the guest kernel and build tools and
builds everything (cached in $SCHEDCP_MICROVM_CACHE, default
/var/cache/schedcp/microvm); later runs reuse the cache.  The tests skip,
with the reason, only when that download fails (no network); a build
failure is a test failure.
"""

from __future__ import annotations

import pytest

from plugins.scheduler.microvm import FetchError, MicroVM


@pytest.fixture(scope="session")
def vm() -> MicroVM:
    try:
        return MicroVM().prepare()
    except FetchError as err:
        pytest.skip(f"cannot download the sched_ext guest kernel or tools: {err}")
