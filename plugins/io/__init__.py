"""The io subsystem: block-device queues, task I/O priority and cgroup I/O throttling."""

from __future__ import annotations
