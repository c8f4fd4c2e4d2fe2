"""The public plugin API: everything a subsystem plugin may import from schedcpd.

A plugin (built in under ``plugins/`` or third party) imports from this module
only; the layering contract (``[tool.importlinter]`` in pyproject.toml, run by
``lint-imports`` in CI and by tests/core/test_layering.py) refuses any other
import of ``schedcpd``.  What is here is kept stable for plugins; the rest of
the engine may change under them.  docs/plugins.md describes each part.
"""

from __future__ import annotations

from schedcpd.actuator import KernelRefused, KnobActuator, TargetGone
from schedcpd.analysis import procfs
from schedcpd.breaker import (
    BreakerSettings,
    GroupSample,
    GuardMetrics,
    GuardRoles,
    Guards,
    Samples,
)
from schedcpd.const import BUS_NAME, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR
from schedcpd.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    NotSupported,
    ObjectMismatch,
    SchedcpError,
)
from schedcpd.faults import FAULT_ENV, fault_point
from schedcpd.hookspecs import PluginContext, hookimpl
from schedcpd.journal import (
    APPLIED,
    OVERRIDDEN,
    PENDING,
    RESTORED,
    SKIPPED,
    STATES,
    Journal,
    JournalEntry,
)
from schedcpd.knobs import FILE, SYSCALL, Knob, KnobChange, KnobNotDeclared, KnobValueRefused
from schedcpd.payloads import (
    ActivePolicy,
    ApplyResult,
    Capability,
    Change,
    Description,
    Finding,
    Health,
    KeyDescription,
    RestoreReport,
    Scope,
    Severity,
)
from schedcpd.plugin_base import JournaledPlugin
from schedcpd.plugin_kit import (
    GroupMatch,
    Plan,
    Write,
    apply_result,
    bind_journal,
    changes,
    follow_inherited,
    hand_over_legacy,
    journal_state,
    journaled_keys,
    policy_body,
    restore_owner,
    thread_keys,
)
from schedcpd.restore_rule import (
    journaled_write,
    merge_reports,
    override_of,
    report_row,
    restore_entry,
)
from schedcpd.sequential import Design, SignTest

__all__ = [
    "APPLIED",
    "BUS_NAME",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_STATE_DIR",
    "FAULT_ENV",
    "FILE",
    "OVERRIDDEN",
    "PENDING",
    "RESTORED",
    "SKIPPED",
    "STATES",
    "SYSCALL",
    "ActivePolicy",
    "ApplyResult",
    "BreakerSettings",
    "Capability",
    "Change",
    "Conflict",
    "Description",
    "Design",
    "Finding",
    "GroupMatch",
    "GroupSample",
    "GuardMetrics",
    "GuardRoles",
    "Guards",
    "Health",
    "InvalidArgument",
    "Journal",
    "JournalEntry",
    "JournaledPlugin",
    "KernelRefused",
    "KeyDescription",
    "Knob",
    "KnobActuator",
    "KnobChange",
    "KnobNotDeclared",
    "KnobValueRefused",
    "NotFound",
    "NotSupported",
    "ObjectMismatch",
    "Plan",
    "PluginContext",
    "RestoreReport",
    "Samples",
    "SchedcpError",
    "Scope",
    "Severity",
    "SignTest",
    "TargetGone",
    "Write",
    "apply_result",
    "bind_journal",
    "changes",
    "fault_point",
    "follow_inherited",
    "hand_over_legacy",
    "hookimpl",
    "journal_state",
    "journaled_keys",
    "journaled_write",
    "merge_reports",
    "override_of",
    "policy_body",
    "procfs",
    "report_row",
    "restore_entry",
    "restore_owner",
    "thread_keys",
]
