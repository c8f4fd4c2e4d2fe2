"""Transcripts of model sessions, kept for audit (one JSONL file per run).

Every request (messages sent, tools offered), response (content, usage,
cost), tool call with its result, and the stop reason is one line.  The
directory is ``--transcript-dir``, else ``$STATE_DIRECTORY/transcripts``
(systemd's ``StateDirectory=``), else ``$XDG_STATE_HOME/schedcp-agent/
transcripts``, else ``~/.local/state/schedcp-agent/transcripts``; files are
created mode 0600 in a 0700 directory.  When the directory cannot be made
(a system user without a home) the run goes on and the report says where
nothing was written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)


def default_dir() -> Path:
    """The transcript directory when none is given.

    Under systemd (``StateDirectory=schedcp-agent``, as the shipped unit has)
    ``$STATE_DIRECTORY/transcripts``; else the XDG state directory.
    """
    unit_state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if unit_state:
        return Path(unit_state) / "transcripts"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "schedcp-agent" / "transcripts"


class Transcript:
    """An append-only JSONL log of one run's model traffic."""

    def __init__(self, directory: Path | None) -> None:
        self.path: Path | None = None
        self.error = ""
        directory = directory or default_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            self.path = directory / f"{stamp}-{os.getpid()}.jsonl"
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.close(fd)
        except OSError as err:
            self.error = f"transcript not written: {directory}: {err.strerror}"
            _LOGGER.warning("%s", self.error)
            self.path = None

    def write(self, kind: str, **fields: Any) -> None:
        """Append one record."""
        if self.path is None:
            return
        line = json.dumps({"t": round(time.time(), 3), "kind": kind, **fields}, default=str)
        with self.path.open("a") as f:
            f.write(line + "\n")
