"""schedcp's scheduler language for sched_ext (docs/scheduler-language.md).

A program (TOML, validated by the JSON Schema in ``schema.json``) declares
task classes and how each is scheduled; :mod:`.schema` checks it (stage 1),
:mod:`.compiler` turns it into BPF C over bpf/scx/scx_common.h,
:mod:`.bounds` computes each class's worst-case wait (stage 2) and
:mod:`.derive` writes a program from a workload profile by rules.
"""

from __future__ import annotations
