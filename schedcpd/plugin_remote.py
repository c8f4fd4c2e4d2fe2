"""The daemon side of an out-of-process plugin: spawn it unprivileged, proxy its hooks.

:func:`spawn` starts ``python -m schedcpd.plugin_child`` under ``setpriv``
(util-linux): as root, as the configured user (default ``nobody``) and its
primary group, no supplementary groups, empty inheritable and bounding
capability sets (so no capability can come back, not even through a setuid
program), and ``no_new_privs``; not as root, with ``no_new_privs`` only (there
is no privilege to drop).  The child inherits one end of a socketpair (the
private channel, :mod:`schedcpd.plugin_channel`) and nothing else.

:class:`RemotePlugin` is what the host registers with pluggy in the plugin's
place: one forwarding function per hook the child implements.  While a hook
runs, the child may ask the core's actuator (``actuate`` requests); the
proxy answers them with the :class:`~schedcpd.actuator.KnobActuator` the
host bound to the plugin's declarations, so every write is checked,
journaled and made by the daemon.  A hook that returns an object rather
than data (``schedcp_guards``) cannot cross the channel and is not
forwarded.  A child that dies, hangs past ``timeout`` or answers out of
turn raises :class:`~schedcpd.plugin_channel.PluginFault` or
``ChannelClosed``: the host disables the plugin as for any fault.
"""

from __future__ import annotations

import inspect
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schedcpd import hookspecs
from schedcpd.actuator import KnobActuator
from schedcpd.const import PLUGIN_PROJECT
from schedcpd.errors import NotSupported
from schedcpd.hookspecs import PluginContext, hookimpl
from schedcpd.plugin_channel import ChannelClosed, PluginFault, error_of, raise_error, recv, send

_LOGGER = logging.getLogger(__name__)

DEFAULT_USER = "nobody"
DEFAULT_TIMEOUT = 300.0
NOT_FORWARDED = frozenset({"schedcp_guards"})
"""Hooks whose answer is an object, not data: an out-of-process plugin cannot offer them."""
_ACTUATE = ("apply", "adopt", "read", "restore", "overridden")


def _python_path() -> str:
    """The daemon's import path, its own schedcpd first: the child runs the same code."""
    ours = str(Path(hookspecs.__file__).resolve().parents[1])
    paths = [ours, *(os.path.abspath(p or ".") for p in sys.path)]
    return os.pathsep.join(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def child_command(target: str, fd: int, user: str) -> list[str]:
    """The command line that starts the child for ``target`` on channel ``fd``."""
    python = [sys.executable, "-m", "schedcpd.plugin_child", "--fd", str(fd),
              "--target", target]
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise NotSupported("setpriv (util-linux) is not installed: out-of-process plugins "
                           "cannot be started unprivileged")
    if os.geteuid() != 0:
        return [setpriv, "--no-new-privs", "--", *python]
    try:
        entry = pwd.getpwnam(user)
    except KeyError as err:
        raise NotSupported(f"plugin user {user!r} does not exist") from err
    if entry.pw_uid == 0:
        raise NotSupported(f"plugin user {user!r} is root: refusing to run a plugin as root")
    return [setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *python]


class RemotePlugin:
    """A plugin running in a child process, as pluggy sees it."""

    def __init__(self, name: str, target: str, user: str = DEFAULT_USER,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.name = name
        self.target = target
        self.user = user
        self.timeout = timeout
        self.actuator: KnobActuator | None = None
        self._lock = threading.Lock()
        self._next = 0
        self._state_dir: Path | None = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = ours
        try:
            self.proc = subprocess.Popen(
                child_command(target, theirs.fileno(), user), pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd="/",
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                     "PYTHONPATH": _python_path(), "HOME": "/nonexistent"})
        finally:
            theirs.close()
        try:
            hello = self._exchange({"id": "hello"}, send_it=False)
        except BaseException:
            self.host_close()
            raise
        self.pid = int(hello.get("pid", 0))
        self.uid = int(hello.get("uid", -1))
        if self.pid != self.proc.pid:
            self.host_close()
            raise PluginFault(f"child said it is pid {self.pid}, spawned {self.proc.pid}")
        self.hooks = [h for h in hello.get("hooks", []) if h not in NOT_FORWARDED]
        for hook in self.hooks:
            setattr(self, hook, self._forwarder(hook))

    # -- the hooks ---------------------------------------------------------

    def _forwarder(self, hook: str) -> Callable[..., Any]:
        spec = getattr(hookspecs, hook, None) if hook.startswith("schedcp_") else None
        if spec is None or not hasattr(spec, f"{PLUGIN_PROJECT}_spec"):
            raise PluginFault(f"the child implements {hook!r}, which is not a hook spec")
        names = list(inspect.signature(spec).parameters)
        source = (f"def {hook}({', '.join(names)}):\n"
                  f"    return _forward({hook!r}, dict({', '.join(f'{n}={n}' for n in names)}))\n")
        scope: dict[str, Any] = {"_forward": self._forward}
        exec(source, scope)  # a function with the spec's own (trusted) parameter names
        forward: Callable[..., Any] = hookimpl(scope[hook])
        return forward

    def _forward(self, hook: str, kwargs: dict[str, Any]) -> Any:
        if hook == "schedcp_startup":
            context: PluginContext = kwargs["context"]
            self.actuator = context.actuator
            kwargs = {"context": {"state_dir": str(self._private_dir()),
                                  "config": context.config}}
        return self._exchange({"hook": hook, "kwargs": kwargs})

    def _private_dir(self) -> Path:
        """A directory of the plugin's own (the daemon's state dir is root's alone)."""
        if self._state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix=f"schedcp-plugin-{self.name}-"))
            if os.geteuid() == 0:
                entry = pwd.getpwnam(self.user)
                os.chown(self._state_dir, entry.pw_uid, entry.pw_gid)
        return self._state_dir

    # -- the channel -------------------------------------------------------

    def _exchange(self, request: dict[str, Any], send_it: bool = True) -> Any:
        """Send ``request``, serve the child's actuator requests, return its answer."""
        with self._lock:
            if send_it:
                self._next += 1
                request = {**request, "id": f"h{self._next}"}
            self._sock.settimeout(self.timeout)
            try:
                if send_it:
                    send(self._sock, request)
                while True:
                    message = recv(self._sock)
                    if "actuate" in message:
                        send(self._sock, self._actuate(message))
                        continue
                    if message.get("id") != request["id"]:
                        raise PluginFault(f"answer {message.get('id')!r} to {request['id']!r}")
                    break
            except (TimeoutError, ChannelClosed, PluginFault, OSError) as err:
                self.host_close()
                if isinstance(err, TimeoutError):
                    raise PluginFault(f"no answer in {self.timeout:g} s: child killed") from err
                raise
        if "error" in message:
            raise_error(message["error"])
        return message.get("result")

    def _actuate(self, message: dict[str, Any]) -> dict[str, Any]:
        """Run one of the child's actuator requests with the core's actuator."""
        ident, method = message.get("id"), message.get("actuate")
        args = message.get("args") or {}
        try:
            if self.actuator is None:
                raise NotSupported(f"plugin {self.name} declared no knobs: nothing to write")
            if method not in _ACTUATE or not isinstance(args, dict):
                raise NotSupported(f"no actuator request {method!r}")
            result = getattr(self.actuator, str(method))(**args)
        except Exception as err:  # every refusal goes back to the plugin, by name
            if not isinstance(err, (NotSupported, TypeError)):
                _LOGGER.warning("plugin %s: actuator refused %s: %s", self.name, method, err)
            return {"id": ident, "error": error_of(err)}
        return {"id": ident, "result": result}

    def host_close(self) -> None:
        """Stop the child and close the channel (the host calls this when disabling)."""
        try:
            self._sock.close()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=30)
            if self._state_dir is not None:
                shutil.rmtree(self._state_dir, ignore_errors=True)
                self._state_dir = None
