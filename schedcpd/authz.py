"""Authorization: may this caller perform this action?  Deny by default.

Order of decision for a caller and an action:

1. uid 0 may do everything.
2. Actions listed in ``authorization.everyone_actions`` (default: observe)
   are allowed to all without asking anyone: polkit is never consulted for
   what every user may do anyway, which keeps read-only calls fast.
3. When polkit is on the bus (and ``authorization.polkit`` is ``auto``), its
   ``CheckAuthorization`` decides.
4. Otherwise members of ``authorization.group`` (default ``schedcp``) get
   ``authorization.group_actions`` (default observe, submit); nobody else
   gets anything more.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import time
from typing import Any, Protocol

from schedcpd.api import Caller
from schedcpd.const import ACTIONS
from schedcpd.errors import AccessDenied

_LOGGER = logging.getLogger(__name__)

_GROUP_CACHE_SECONDS = 10.0


class PolkitChecker(Protocol):
    """What the authorizer needs from a polkit client."""

    @property
    def available(self) -> bool:
        """Whether polkit can be asked now."""
        ...

    async def check(self, caller: Caller, action: str) -> bool:
        """Ask polkit; True when authorized."""
        ...


class Authorizer:
    """Decide whether a caller may perform an action."""

    def __init__(self, settings: dict[str, Any], polkit: PolkitChecker | None = None) -> None:
        self.polkit = polkit
        self._groups: dict[int, tuple[float, frozenset[int]]] = {}
        self.reconfigure(settings)

    def reconfigure(self, settings: dict[str, Any]) -> None:
        """Apply a (re)loaded ``[authorization]`` table."""
        self.use_polkit = settings["polkit"] == "auto"
        self.group = settings["group"]
        self.everyone = frozenset(settings["everyone_actions"])
        self.group_actions = frozenset(settings["group_actions"])
        self._groups.clear()

    def mode(self) -> str:
        """``polkit`` or ``config``: what decides privileged actions now."""
        return "polkit" if self._polkit_active() else "config"

    def _polkit_active(self) -> bool:
        return self.use_polkit and self.polkit is not None and self.polkit.available

    def decide_locally(self, caller: Caller, action: str) -> bool | None:
        """Decide without I/O when possible; ``None`` means polkit must be asked."""
        if caller.uid == 0 or action in self.everyone:
            return True
        if self._polkit_active():
            return None
        return action in self.group_actions and self._in_group(caller)

    def access(self, caller: Caller) -> dict[str, str]:
        """What ``caller`` may do, per action: ``yes``, ``no``, or ``polkit`` (asked per call)."""
        decisions = {True: "yes", False: "no", None: "polkit"}
        return {action: decisions[self.decide_locally(caller, action)] for action in ACTIONS}

    async def authorize(self, caller: Caller, action: str) -> None:
        """Return if allowed; raise :class:`AccessDenied` otherwise."""
        decision = self.decide_locally(caller, action)
        if decision is None:
            assert self.polkit is not None
            try:
                decision = await self.polkit.check(caller, action)
            except Exception as err:
                _LOGGER.warning("polkit check of %s for uid %d failed: %s",
                                action, caller.uid, err)
                raise AccessDenied(f"{action}: polkit could not be asked ({err})") from err
            how = "polkit"
        else:
            how = "configuration"
        if not decision:
            raise AccessDenied(f"uid {caller.uid} is not authorized for {action} ({how})")

    async def allows(self, caller: Caller, action: str) -> bool:
        """Whether ``caller`` holds ``action`` (asking polkit when it decides)."""
        try:
            await self.authorize(caller, action)
        except AccessDenied:
            return False
        return True

    def _in_group(self, caller: Caller) -> bool:
        try:
            gid = grp.getgrnam(self.group).gr_gid
        except KeyError:
            return False
        # Prefer the groups the bus saw on the connection (SO_PEERGROUPS): they
        # are the process's real credentials, not what /etc/group says now.
        if caller.gids is not None:
            return gid in caller.gids
        now = time.monotonic()
        cached = self._groups.get(caller.uid)
        if cached is None or now - cached[0] > _GROUP_CACHE_SECONDS:
            cached = (now, _groups_of(caller.uid))
            self._groups[caller.uid] = cached
        return gid in cached[1]


def _groups_of(uid: int) -> frozenset[int]:
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return frozenset()
    return frozenset(os.getgrouplist(pw.pw_name, pw.pw_gid))
