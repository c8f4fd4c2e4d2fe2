"""The progress bar on stderr (tqdm; plain lines when tqdm is missing or disabled)."""

from __future__ import annotations

import sys
import time
from typing import Any


class ProgressBar:
    """Counts windows; ``bar(description, advance)``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.done = 0
        self.total = 0
        self._bar: Any = None
        self._started = time.monotonic()
        self._last = ""

    def set_total(self, total: int) -> None:
        """How many windows the run has."""
        self.total = total
        if not self.enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self._bar = None
            return
        self._bar = tqdm(total=total, unit="win", file=sys.stderr, dynamic_ncols=True,
                         bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} windows "
                                    "[{elapsed}<{remaining}]")

    def __call__(self, description: str, advance: int = 0) -> None:
        """Show ``description``; count ``advance`` more windows done."""
        advance = max(0, min(advance, self.total - self.done)) if self.total else advance
        self.done += advance
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description_str(description[:48], refresh=False)
            self._bar.update(advance)
        elif description != self._last:
            elapsed = time.monotonic() - self._started
            print(f"[{elapsed:6.0f} s {self.done}/{self.total}] {description}", file=sys.stderr,
                  flush=True)
        self._last = description

    def close(self) -> None:
        """Fill the bar (skipped and failed windows count as done) and close it."""
        if self._bar is not None:
            self._bar.update(max(0, self.total - self.done))
            self._bar.close()
            self._bar = None
