"""PropertiesChanged(Subsystems): a plugin that fails at run time, a reload that changes it."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

from dbus_fast import Message, MessageType

from schedcpd.const import MANAGER_INTERFACE, OBJECT_PATH
from schedcpd.dbus.bus import MessageBus
from tests.harness import add_match, bus_call, wait_until_async

PROPERTIES = "org.freedesktop.DBus.Properties"


def _site(tmp_path: Path, gone: Path) -> Path:
    """Two third-party plugins (entry points) that each provide a subsystem."""
    site = tmp_path / "site"
    site.mkdir()
    # "flaky" raises the first time the daemon asks it something at run time.
    (site / "flaky_plugin.py").write_text(textwrap.dedent("""
        from schedcpd.hookspecs import hookimpl

        @hookimpl
        def schedcp_describe():
            return {"name": "flaky", "description": "test subsystem", "capabilities": {}}

        @hookimpl
        def schedcp_explain_keys(subsystem, pid):
            if subsystem == "flaky":
                raise RuntimeError("flaky exploded")
            return None
    """))
    # "fading" stops providing its subsystem once its device is gone.
    (site / "fading_plugin.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        from schedcpd.hookspecs import hookimpl

        @hookimpl
        def schedcp_describe():
            if Path({str(gone)!r}).exists():
                return None
            return {{"name": "fading", "description": "test subsystem", "capabilities": {{}}}}
    """))
    dist = site / "subsystem_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: subsystem-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[schedcp.plugins]\nflaky = flaky_plugin\nfading = fading_plugin\n")
    return site


def test_subsystems_change_is_announced(readable_path: Path, start_daemon) -> None:
    # The plugins run out of process as nobody: their site and the file they
    # look at must be readable by that user.
    gone = readable_path / "device-gone"
    site = _site(readable_path, gone)
    proc = start_daemon("[metrics]\nenabled = false\n",
                        env={"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})

    async def watch() -> tuple[list[str], list[list[str]], list[list[str]]]:
        bus = await MessageBus(bus_address=proc.address).connect()
        changes: list[list[str]] = []

        def on_message(msg: Message) -> None:
            if (msg.message_type == MessageType.SIGNAL and msg.member == "PropertiesChanged"
                    and msg.path == OBJECT_PATH and msg.body[0] == MANAGER_INTERFACE
                    and "Subsystems" in msg.body[1]):
                changes.append(msg.body[1]["Subsystems"].value)

        bus.add_message_handler(on_message)
        await add_match(bus, f"type='signal',path='{OBJECT_PATH}',interface='{PROPERTIES}'")

        async def call(interface: str, member: str, sig: str = "", *body: object) -> list:
            return (await bus_call(bus, member, sig, *body, interface=interface)).body

        [first] = await call(PROPERTIES, "Get", "ss", MANAGER_INTERFACE, "Subsystems")
        # A plugin failure at run time: Explain asks every subsystem (on a
        # worker thread), flaky raises and is disabled.
        await call(MANAGER_INTERFACE, "Explain", "s", str(os.getpid()))
        await wait_until_async(lambda: changes, 10, "PropertiesChanged after the failure")
        after_failure = list(changes)
        # A reload after the fading plugin lost its device.
        gone.touch()
        await call(MANAGER_INTERFACE, "Reload")
        await wait_until_async(lambda: len(changes) > 1, 10, "PropertiesChanged after reload")
        # A reload that changes nothing announces nothing (a signal emitted by
        # Reload would precede its reply on this connection).
        await call(MANAGER_INTERFACE, "Reload")
        await call(PROPERTIES, "Get", "ss", MANAGER_INTERFACE, "Version")
        seen = list(changes)
        bus.disconnect()
        return first.value, after_failure, seen

    first, after_failure, seen = asyncio.run(watch())
    assert {"flaky", "fading", "scheduler"} <= set(first), first
    assert after_failure == [sorted(set(first) - {"flaky"})], after_failure
    assert seen == [*after_failure, sorted(set(first) - {"flaky", "fading"})], seen
    assert "plugin flaky disabled: raised in schedcp_explain_keys" in proc.log_text()
