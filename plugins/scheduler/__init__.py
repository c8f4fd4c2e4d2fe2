"""Scheduler subsystem plugin: T1 (config-only) knobs, sched_ext detection.

The host registers :data:`plugins.scheduler.plugin.plugin`.
"""
