"""schedcp's scheduler language for sched_ext (docs/scheduler-language.md).

A program (TOML, validated by the JSON Schema in ``schema.json``) declares
task classes and how each is scheduled; :mod:`.schema` checks it (stage 1),
:mod:`.compiler` turns it into BPF C over bpf/scx/scx_common.h,
:mod:`.bounds` computes each class's worst-case wait (stage 2) and
:mod:`.derive` writes a program from a workload profile by rules.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from plugins.scheduler.scxlang import bounds
from plugins.scheduler.scxlang.compiler import Compiled, compile_program
from plugins.scheduler.scxlang.schema import Checked
from plugins.scheduler.scxlang.schema import check as _check

__all__ = ["Checked", "Compiled", "check", "compile_text", "static_findings"]


@lru_cache(maxsize=64)
def check(text: str, source: str = "<policy>") -> Checked:
    """Stage 1 (cached by text): parse, JSON Schema, cross-field and identifier rules."""
    return _check(text, source)


@lru_cache(maxsize=64)
def compile_text(text: str) -> Compiled:
    """The C of a program that passes :func:`check` (ValueError if it does not)."""
    checked = check(text)
    if not checked.ok or checked.program is None:
        first = next(f for f in checked.findings if f["severity"] == "error")
        raise ValueError(f"the program does not pass the schema stage: {first['message']}")
    return compile_program(checked.program)


def static_findings(text: str) -> list[dict[str, Any]]:
    """Stage 2 for a program: the wait bound of every class (errors and evidence)."""
    checked = check(text)
    if checked.program is None or checked.lines is None or not checked.ok:
        return [f for f in checked.findings if f["severity"] == "error"]
    return bounds.findings(checked.program, checked.lines.line)
