"""The child side of an out-of-process plugin: runs its hooks, asks the core to write.

Started by :mod:`schedcpd.plugin_remote` as an unprivileged user (``setpriv``:
another uid and gid, no supplementary groups, no capabilities, no new
privileges) with one end of a socketpair as ``--fd``.  It loads the plugin
(``--target``, an entry point value ``module`` or ``module:attribute``),
registers it on its own pluggy manager with the daemon's hook specs, and
answers the daemon's hook calls.  ``context.actuator`` is
:class:`RemoteActuator`: the plugin's change sets go back over the channel,
and the core applies them within the plugin's declarations.  The child has
no journal (``context.journal`` is ``None``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pluggy

from schedcpd import hookspecs
from schedcpd.const import PLUGIN_PROJECT
from schedcpd.hookspecs import PluginContext
from schedcpd.knobs import KnobChange
from schedcpd.plugin_channel import ChannelClosed, error_of, raise_error, recv, send

_LOGGER = logging.getLogger("schedcpd.plugin_child")


class RemoteActuator:
    """``context.actuator`` out of process: each call is a request to the core's actuator."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._next = 0

    def _ask(self, method: str, **args: Any) -> Any:
        self._next += 1
        ident = f"a{self._next}"
        send(self._sock, {"id": ident, "actuate": method, "args": args})
        answer = recv(self._sock)
        if answer.get("id") != ident:
            raise ChannelClosed(f"answer {answer.get('id')!r} to request {ident!r}")
        if "error" in answer:
            raise_error(answer["error"])
        return answer.get("result")

    def apply(self, owner: str, changes: list[KnobChange | dict[str, Any]]
              ) -> list[dict[str, Any]]:
        """Have the core check, journal and write a change set; one outcome per change."""
        wire = [c.as_dict() if isinstance(c, KnobChange) else c for c in changes]
        return list(self._ask("apply", owner=owner, changes=wire))

    def adopt(self, owner: str, changes: list[KnobChange | dict[str, Any]],
              note: str = "inherited at fork") -> list[int]:
        """Have the core journal values the kernel set by itself (inherited at fork)."""
        wire = [c.as_dict() if isinstance(c, KnobChange) else c for c in changes]
        return list(self._ask("adopt", owner=owner, changes=wire, note=note))

    def read(self, knob_name: str, target: str, key: str = "") -> Any:
        """The live value of a declared target, read by the core."""
        return self._ask("read", knob_name=knob_name, target=target, key=key)

    def restore(self, owner: str | None) -> dict[str, Any]:
        """Have the core restore ``owner``'s values (all: ``None``)."""
        return dict(self._ask("restore", owner=owner))

    def overridden(self) -> list[dict[str, Any]]:
        """Values of ours someone else changed (the core marks them overridden)."""
        return list(self._ask("overridden"))


def _load(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def _call(pm: pluggy.PluginManager, hook: str, kwargs: dict[str, Any],
          sock: socket.socket) -> Any:
    if hook == "schedcp_startup":
        ctx = kwargs.get("context") or {}
        kwargs = {"context": PluginContext(state_dir=Path(ctx.get("state_dir", "/")),
                                           config=dict(ctx.get("config") or {}),
                                           actuator=RemoteActuator(sock))}
    caller = getattr(pm.hook, hook)
    result = caller(**kwargs)
    if caller.spec is not None and not caller.spec.opts.get("firstresult"):
        result = result[0] if result else None
    return result


def serve(sock: socket.socket, target: str) -> int:
    """Load the plugin, say hello, answer hook calls until the daemon closes the channel."""
    pm = pluggy.PluginManager(PLUGIN_PROJECT)
    pm.add_hookspecs(hookspecs)
    try:
        plugin = _load(target)
        pm.register(plugin, name="plugin")
        pm.check_pending()
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or ())
    except Exception as err:  # reported to the daemon, which disables the plugin
        send(sock, {"id": "hello", "error": error_of(err)})
        return 1
    send(sock, {"id": "hello", "result": {"hooks": hooks, "pid": os.getpid(),
                                          "uid": os.getuid()}})
    while True:
        try:
            request = recv(sock)
        except ChannelClosed:
            return 0
        ident, hook = request.get("id"), str(request.get("hook", ""))
        if hook not in hooks:
            send(sock, {"id": ident, "error": {"type": "PluginFault", "named": False,
                                               "message": f"no hook {hook!r} here"}})
            continue
        try:
            answer: dict[str, Any] = {"id": ident,
                                      "result": _call(pm, hook, request.get("kwargs") or {},
                                                      sock)}
        except ChannelClosed:
            return 0
        except Exception as err:  # the daemon decides: a named error or a fault
            _LOGGER.debug("hook %s raised", hook, exc_info=True)
            answer = {"id": ident, "error": error_of(err)}
        send(sock, answer)


def main(argv: list[str] | None = None) -> int:
    """``python -m schedcpd.plugin_child --fd N --target module[:attr]``."""
    parser = argparse.ArgumentParser(prog="schedcpd.plugin_child")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="plugin child %(process)d: %(levelname)s %(message)s")
    os.set_inheritable(args.fd, False)  # nothing the plugin starts gets the channel
    sock = socket.socket(fileno=args.fd)
    try:
        return serve(sock, args.target)
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
