"""Sequential decisions over paired measurements (Wald's SPRT on a sign).

A dynamic test compares a guard metric with and without a policy in
*pairs* of short windows measured back to back.  One pair alone proves
little on a shared host: a stray preemption can make any window look bad.
:class:`SignTest` turns the pairs into a verdict with stated error rates:

- each pair is an event, *regressed* (the policy's window is worse than the
  baseline's beyond a margin) or *clean*;
- if the policy does no harm, a pair looks regressed with probability at
  most ``p0`` (noise); if it does harm, with probability at least ``p1``;
- Wald's sequential probability ratio test adds ``log(p1/p0)`` for each
  regressed pair and ``log((1-p1)/(1-p0))`` for each clean one, and stops
  at ``log((1-beta)/alpha)`` (regressed) or ``log(beta/(1-alpha))`` (clean).
  With independent pairs the chance of a wrong "regressed" is at most about
  ``alpha`` and of a wrong "clean" at most about ``beta``.
- after ``max_pairs`` without reaching a bound the verdict is
  ``inconclusive``: the caller measures again or refuses, never guesses.

With the defaults (p0 0.2, p1 0.8, alpha = beta = 1 %) a verdict needs a
lead of four pairs one way: four regressed pairs in a row fail a policy,
four clean ones pass it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["regressed", "clean", "undecided", "inconclusive"]


@dataclass(frozen=True)
class Design:
    """The error model of a :class:`SignTest` (see the module docstring)."""

    p0: float = 0.2
    p1: float = 0.8
    alpha: float = 0.01
    beta: float = 0.01
    max_pairs: int = 12

    def __post_init__(self) -> None:
        if not 0 < self.p0 < self.p1 < 1:
            raise ValueError(f"need 0 < p0 < p1 < 1, got p0={self.p0} p1={self.p1}")
        if not (0 < self.alpha < 0.5 and 0 < self.beta < 0.5):
            raise ValueError("alpha and beta must lie in (0, 0.5)")
        if self.max_pairs < 1:
            raise ValueError("max_pairs must be at least 1")

    @property
    def upper(self) -> float:
        """Log-likelihood ratio at which the test decides "regressed"."""
        return math.log((1 - self.beta) / self.alpha)

    @property
    def lower(self) -> float:
        """Log-likelihood ratio at which the test decides "clean"."""
        return math.log(self.beta / (1 - self.alpha))

    @property
    def min_pairs(self) -> int:
        """The fewest pairs that can reach a verdict either way."""
        up = math.ceil(self.upper / math.log(self.p1 / self.p0))
        down = math.ceil(self.lower / math.log((1 - self.p1) / (1 - self.p0)))
        return max(up, down)


@dataclass
class SignTest:
    """One metric's running test: feed it pairs with :meth:`add`."""

    design: Design = field(default_factory=Design)
    regressed: int = 0
    clean: int = 0
    skipped: int = 0
    llr: float = 0.0
    verdict: Verdict = "undecided"

    @property
    def pairs(self) -> int:
        """Pairs that carried information (regressed + clean)."""
        return self.regressed + self.clean

    @property
    def decided(self) -> bool:
        """Whether the test has stopped (regressed, clean or inconclusive)."""
        return self.verdict != "undecided"

    def add(self, regressed: bool | None) -> Verdict:
        """Record one pair (None: no information, e.g. no samples) and return the verdict."""
        if self.decided:
            return self.verdict
        d = self.design
        if regressed is None:
            self.skipped += 1
        elif regressed:
            self.regressed += 1
            self.llr += math.log(d.p1 / d.p0)
        else:
            self.clean += 1
            self.llr += math.log((1 - d.p1) / (1 - d.p0))
        if self.llr >= d.upper:
            self.verdict = "regressed"
        elif self.llr <= d.lower:
            self.verdict = "clean"
        elif self.pairs + self.skipped >= d.max_pairs:
            self.verdict = "inconclusive"
        return self.verdict

    def summary(self) -> dict[str, object]:
        """A JSON-able account of the test, for a verifier report."""
        d = self.design
        return {"verdict": self.verdict, "regressed_pairs": self.regressed,
                "clean_pairs": self.clean, "uninformative_pairs": self.skipped,
                "llr": round(self.llr, 3), "bounds": [round(d.lower, 3), round(d.upper, 3)],
                "p0": d.p0, "p1": d.p1, "alpha": d.alpha, "beta": d.beta,
                "max_pairs": d.max_pairs}
