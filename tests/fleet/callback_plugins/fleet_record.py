"""Ansible stdout callback for the fleet tests: the run as one JSON document.

ansible-core no longer ships a JSON callback (ansible.posix.json lives in a
collection this repository does not need).  This one prints
``{"plays": [{"tasks": [{"task": {"name"}, "hosts": {host: result}}]}],
"stats": {host: {...}}}`` at the end of the run — the shape of
ansible.posix.json, for the parts the tests read.
"""

from __future__ import annotations

import json
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: fleet_record
type: stdout
short_description: the run as one JSON document (schedcp's fleet tests)
description: Prints every task's result per host and the stats, as JSON, at the end.
"""


class CallbackModule(CallbackBase):
    """Collect results per task and host; print them with the stats at the end."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "fleet_record"

    def __init__(self) -> None:
        super().__init__()
        self.plays: list[dict[str, Any]] = []

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self.plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self.plays[-1]["tasks"].append({"task": {"name": task.get_name()}, "hosts": {}})

    def _record(self, result: Any, **flags: bool) -> None:
        data = dict(result._result)
        data.update(flags)
        self.plays[-1]["tasks"][-1]["hosts"][result._host.get_name()] = data

    def v2_runner_on_ok(self, result: Any) -> None:
        self._record(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record(result, failed=True)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._record(result, skipped=True)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        hosts = sorted(stats.processed)
        summary = {h: stats.summarize(h) for h in hosts}
        self._display.display(json.dumps({"plays": self.plays, "stats": summary},
                                         default=str, sort_keys=True))
