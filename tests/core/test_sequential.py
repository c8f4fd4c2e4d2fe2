"""The sequential sign test behind the verifier's dynamic stage (pure logic)."""

from __future__ import annotations

import random

import pytest

from schedcpd.sequential import Design, SignTest


def run(events: list[bool | None], design: Design | None = None) -> SignTest:
    test = SignTest(design or Design())
    for event in events:
        test.add(event)
    return test


def test_four_regressed_pairs_in_a_row_fail() -> None:
    assert Design().min_pairs == 4
    assert run([True] * 3).verdict == "undecided"
    assert run([True] * 4).verdict == "regressed"


def test_four_clean_pairs_in_a_row_pass() -> None:
    assert run([False] * 3).verdict == "undecided"
    assert run([False] * 4).verdict == "clean"


def test_a_verdict_needs_a_lead_of_four() -> None:
    test = run([True, False, True, True, True])
    assert test.verdict == "undecided" and test.regressed == 4 and test.clean == 1
    assert run([True, False, True, True, True, True]).verdict == "regressed"


def test_alternating_evidence_is_inconclusive_at_the_bound() -> None:
    test = run([True, False] * 10, Design(max_pairs=12))
    assert test.verdict == "inconclusive" and test.pairs == 12


def test_pairs_without_samples_count_toward_the_bound_only() -> None:
    test = run([None] * 5, Design(max_pairs=5))
    assert test.verdict == "inconclusive" and test.skipped == 5 and test.llr == 0


def test_a_decided_test_ignores_later_pairs() -> None:
    test = run([False] * 4 + [True] * 10)
    assert test.verdict == "clean" and test.regressed == 0


@pytest.mark.parametrize("kwargs", [{"p0": 0.8, "p1": 0.2}, {"alpha": 0.6}, {"max_pairs": 0}])
def test_a_bad_design_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Design(**kwargs)


def test_error_rates_hold_for_the_design_assumptions() -> None:
    """Simulated: p = p0 (harmless) rarely fails, p = p1 (harmful) rarely passes."""
    rng = random.Random(1)
    design = Design()

    def verdicts(p: float) -> dict[str, int]:
        out = {"regressed": 0, "clean": 0, "inconclusive": 0}
        for _ in range(4000):
            test = SignTest(design)
            while not test.decided:
                test.add(rng.random() < p)
            out[test.verdict] += 1
        return out

    harmless, harmful = verdicts(design.p0), verdicts(design.p1)
    assert harmless["regressed"] / 4000 <= 2 * design.alpha, harmless
    assert harmful["clean"] / 4000 <= 2 * design.beta, harmful
    # Harmless noise far below p0 (a quiet host) never fails.
    assert verdicts(0.02)["regressed"] == 0
