"""Budget of one run: tokens, dollars and wall time, with a configurable price table.

Prices are US dollars per million tokens, per model name prefix (longest
prefix wins), for plain input, output, cache writes and cache reads
(the Messages API reports the four separately in ``usage``).  The table can
be replaced with ``--prices FILE`` (JSON of the same shape) or
``$SCHEDCP_AGENT_PRICES``; a model the table does not know is charged at the
``default`` entry, and the report says so.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "claude-opus-4": {"input": 15.0, "output": 75.0, "cache_write": 18.75, "cache_read": 1.5},
    "claude-sonnet-4": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3},
    "claude-haiku-4": {"input": 1.0, "output": 5.0, "cache_write": 1.25, "cache_read": 0.1},
    "claude-3-5-haiku": {"input": 0.8, "output": 4.0, "cache_write": 1.0, "cache_read": 0.08},
    "default": {"input": 15.0, "output": 75.0, "cache_write": 18.75, "cache_read": 1.5},
}


def load_prices(path: str | None = None) -> dict[str, dict[str, float]]:
    """The price table from ``path`` / ``$SCHEDCP_AGENT_PRICES``, else the built-in one."""
    path = path or os.environ.get("SCHEDCP_AGENT_PRICES")
    if not path:
        return dict(DEFAULT_PRICES)
    table = json.loads(Path(path).read_text())
    if not isinstance(table, dict) or "default" not in table:
        raise ValueError(f"{path}: a JSON object with a 'default' entry is required")
    return {str(k): {kk: float(vv) for kk, vv in v.items()} for k, v in table.items()}


def price_for(table: dict[str, dict[str, float]], model: str) -> tuple[str, dict[str, float]]:
    """(matched key, prices) for ``model``: the longest matching prefix, else default."""
    keys = sorted((k for k in table if k != "default" and model.startswith(k)), key=len)
    key = keys[-1] if keys else "default"
    return key, table[key]


class BudgetSpent(Exception):
    """The run's budget is used up; the agent stops and reports."""


@dataclass
class Budget:
    """Limits and what was spent so far (None: no limit)."""

    max_usd: float | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None
    prices: dict[str, dict[str, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    started: float = field(default_factory=time.monotonic)
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    usd: float = 0.0
    requests: int = 0
    price_key: str = ""

    @property
    def tokens(self) -> int:
        """Every token billed so far."""
        return (self.input_tokens + self.output_tokens + self.cache_write_tokens
                + self.cache_read_tokens)

    def add(self, model: str, usage: Any) -> float:
        """Account one response's ``usage``; return its cost in dollars."""
        key, p = price_for(self.prices, model)
        self.price_key = key
        inp = int(getattr(usage, "input_tokens", 0) or 0)
        out = int(getattr(usage, "output_tokens", 0) or 0)
        cw = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
        cr = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
        cost = (inp * p["input"] + out * p["output"] + cw * p.get("cache_write", p["input"])
                + cr * p.get("cache_read", p["input"])) / 1e6
        self.input_tokens += inp
        self.output_tokens += out
        self.cache_write_tokens += cw
        self.cache_read_tokens += cr
        self.usd += cost
        self.requests += 1
        return cost

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def exhausted(self) -> str | None:
        """Why the budget is spent, or None."""
        if self.max_usd is not None and self.usd >= self.max_usd:
            return f"dollar budget spent: ${self.usd:.4f} of ${self.max_usd:.4f}"
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return f"token budget spent: {self.tokens} of {self.max_tokens}"
        if self.max_seconds is not None and self.elapsed() >= self.max_seconds:
            return f"time budget spent: {self.elapsed():.0f} s of {self.max_seconds:.0f} s"
        return None

    def check(self) -> None:
        """Raise :class:`BudgetSpent` when any limit is reached."""
        why = self.exhausted()
        if why:
            raise BudgetSpent(why)

    def output_allowance(self, model: str, wanted: int) -> int:
        """At most ``wanted`` output tokens, fewer if the money or tokens left are fewer."""
        allowed = wanted
        if self.max_tokens is not None:
            allowed = min(allowed, max(1, self.max_tokens - self.tokens))
        if self.max_usd is not None:
            _, p = price_for(self.prices, model)
            left = max(0.0, self.max_usd - self.usd)
            allowed = min(allowed, max(1, int(left * 1e6 / p["output"])))
        return allowed

    def as_dict(self) -> dict[str, Any]:
        """The cost part of the report."""
        return {
            "requests": self.requests, "tokens": self.tokens,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "usd": round(self.usd, 6), "price_key": self.price_key or None,
            "limits": {"usd": self.max_usd, "tokens": self.max_tokens,
                       "seconds": self.max_seconds},
            "seconds": round(self.elapsed(), 1),
        }
