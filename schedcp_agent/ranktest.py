"""A one-sided rank-sum (Mann-Whitney) permutation test on two windows of samples.

The learning role asks one question of a deployment: are the samples after
it better than the samples before it, beyond the sample-to-sample noise
measured in the same run?  The statistic is the rank sum of the smaller
window among both (mid-ranks for ties, so a figure that is mostly 0 -- a
task that rarely waits -- is handled exactly); its null distribution is that
of every way to split the pooled samples into windows of the same sizes.
It is enumerated when there are at most :data:`EXACT_SPLITS` splits; with
:data:`NORMAL_MIN` samples or more in each window the rank sum's normal
approximation (tie-corrected variance, continuity correction: what
``scipy.stats.mannwhitneyu`` does for large samples) is used; otherwise it
is drawn :data:`DRAWS` times from a generator with a fixed seed.  The same
samples always give the same p-value.  scipy, which has this test, is not
a dependency of the project; this is 60 lines.
"""

from __future__ import annotations

import itertools
import math
import random

EXACT_SPLITS = 20000
NORMAL_MIN = 10
DRAWS = 10000
_SEED = 26


def midranks(values: list[float]) -> list[float]:
    """Ranks 1..n of ``values`` in their order, ties sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def p_tails(before: list[float], after: list[float]) -> tuple[float, float]:
    """One-sided p-values that ``after`` tends to be (greater, less) than ``before``.

    Small when the after samples rank above (below) the before samples more
    than a split of the pooled samples does by chance; both 1.0 when every
    value is tied (nothing moved).
    """
    if not before or not after:
        raise ValueError("both windows need at least one sample")
    ranks = midranks(before + after)
    if len(set(ranks)) == 1:
        return 1.0, 1.0
    # The smaller window's rank sum; a high after sum is a low before sum.
    small, sign = ((ranks[len(before):], 1.0) if len(after) <= len(before)
                   else (ranks[:len(before)], -1.0))
    k, eps = len(small), 1e-9
    observed = sum(small)
    splits = math.comb(len(ranks), k)
    if splits > EXACT_SPLITS and min(len(before), len(after)) >= NORMAL_MIN:
        greater, less = _normal(ranks, k, observed)
        return (greater, less) if sign > 0 else (less, greater)
    if splits <= EXACT_SPLITS:
        sums = [sum(c) for c in itertools.combinations(ranks, k)]
        total = len(sums)
    else:
        rng = random.Random(_SEED)
        sums = [sum(rng.sample(ranks, k)) for _ in range(DRAWS)]
        total = DRAWS
    high = sum(1 for v in sums if v >= observed - eps)
    low = sum(1 for v in sums if v <= observed + eps)
    if splits > EXACT_SPLITS:  # a drawn p-value is never 0
        high, low, total = high + 1, low + 1, total + 1
    greater, less = high / total, low / total
    return (greater, less) if sign > 0 else (less, greater)


def _normal(ranks: list[float], k: int, observed: float) -> tuple[float, float]:
    """(P(sum >= observed), P(sum <= observed)) for the rank sum of ``k`` of ``ranks``."""
    n = len(ranks)
    mean = k * (n + 1) / 2
    ties: dict[float, int] = {}
    for r in ranks:
        ties[r] = ties.get(r, 0) + 1
    t = sum(c ** 3 - c for c in ties.values())
    var = k * (n - k) / 12 * ((n + 1) - t / (n * (n - 1)))
    if var <= 0:
        return 1.0, 1.0
    sd = math.sqrt(var)

    def upper(z: float) -> float:
        return 0.5 * math.erfc(z / math.sqrt(2))

    return (min(1.0, upper((observed - mean - 0.5) / sd)),
            min(1.0, upper((mean - observed - 0.5) / sd)))


def p_greater(before: list[float], after: list[float]) -> float:
    """One-sided p-value that ``after`` tends to be greater than ``before``."""
    return p_tails(before, after)[0]


def p_better(before: list[float], after: list[float], better: str) -> float:
    """One-sided p-value that ``after`` is better (``higher`` or ``lower``) than ``before``."""
    greater, less = p_tails(before, after)
    return greater if better == "higher" else less
