"""The dvfs subsystem plugin: cpufreq policies, boost and utilisation clamps (docs/dvfs.md)."""

from __future__ import annotations
