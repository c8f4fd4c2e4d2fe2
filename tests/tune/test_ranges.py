"""Range verification: a parameter box verified once at its corners and centre covers its points.

``schedcpd.ranges`` on its own, then through a real schedcpd (VerifyPolicy on
a private bus) with ``[verifier] range_verification = true``.
"""

from __future__ import annotations

import json
import tomllib

import pytest

from schedcpd.ranges import RangeCache, box_of, probe_points, template_digest
from tests.deploy.conftest import FAST
from tests.harness import call

RANGE_CONFIG = FAST.replace("[verifier]\n", "[verifier]\nrange_verification = true\n")


def _text(nice: int = 0, slice_us: int = 500, nice_max: int = 19, tags: str = "[]",
          slack: str = "") -> str:
    return f"""[policy]
name = "range-test"
description = "range verification test"
tags = {tags}

[parameters.batch_nice]
field = "group[1].task.nice"
min = 0
max = {nice_max}

[parameters.probe_slice_us]
field = "group[0].task.slice_us"
min = 100
max = 1000

[[group]]
name = "probe"
match = {{ pid = [1] }}
task = {{ slice_us = {slice_us}{slack} }}
descendants = false

[[group]]
name = "batch"
match = {{ pid = [1] }}
task = {{ nice = {nice} }}
descendants = false
"""


def test_the_box_its_corners_and_centre_and_the_template() -> None:
    doc = tomllib.loads(_text())
    box = box_of(doc)
    assert box == {"batch_nice": ("group[1].task.nice", 0.0, 19.0),
                   "probe_slice_us": ("group[0].task.slice_us", 100.0, 1000.0)}
    points = probe_points(doc, box)
    assert len(points) == 5  # 2^2 corners and the centre
    assert [p for p, _ in points][-1] == {"batch_nice": 9, "probe_slice_us": 550}
    for point, variant in points:  # integers stay integers, written into the fields
        assert variant["group"][1]["task"]["nice"] == point["batch_nice"]
        assert isinstance(variant["group"][0]["task"]["slice_us"], int)
    same = template_digest(doc, box)
    # Values inside the box and descriptive metadata do not change the template ...
    assert template_digest(tomllib.loads(_text(nice=7, slice_us=300, tags='["x"]')), box) == same
    # ... any other knob, or the declared ranges, do.
    assert template_digest(tomllib.loads(_text(slack=", timer_slack_ns = 1")), box) != same
    assert template_digest(tomllib.loads(_text(nice_max=10)), box) != same


def test_the_cache_covers_points_inside_an_unexpired_box_only() -> None:
    cache = RangeCache(lifetime=60)
    doc = tomllib.loads(_text())
    box = box_of(doc)
    cache.remember(template_digest(doc, box), box, "r" * 64, "p" * 64, now=1000.0)
    inside = tomllib.loads(_text(nice=19, slice_us=100))
    assert cache.covering(inside, now=1001.0) is not None
    assert cache.covering(inside, now=1061.0) is None  # expired
    assert cache.covering(tomllib.loads(_text(nice=3, slack=", timer_slack_ns = 1")),
                          now=1001.0) is None  # another template
    assert cache.covering(tomllib.loads(_text(nice=3, nice_max=10)), now=1001.0) is None


def _dynamic(address: str, text: str) -> tuple[str, dict]:
    policy_id = call(address, "SubmitPolicy", "s", text)
    token, report = call(address, "VerifyPolicy", "s", policy_id)
    report = json.loads(report)
    assert token, json.dumps(report, indent=1)
    return str(token), next(s for s in report["stages"] if s["stage"] == "dynamic")


@pytest.mark.slow
def test_a_verified_range_covers_the_dynamic_stage_of_points_inside(start_daemon) -> None:
    proc = start_daemon(RANGE_CONFIG)
    _, first = _dynamic(proc.address, _text())
    assert "covered_by" not in first
    runs = first["range"]["points"]
    assert len(runs) == 5 and all(r["verdict"] == "passed" for r in runs), runs
    # Another version inside the box: schema and static run, dynamic is covered.
    token, covered = _dynamic(proc.address, _text(nice=12, slice_us=250, tags='["tune:x"]'))
    assert covered["verdict"] == "passed" and "range" not in covered
    assert covered["covered_by"]["template_digest"] == first["range"]["template_digest"]
    assert covered["findings"][0]["code"] == "range-covered"
    # The token is an ordinary one, bound to this version's own digest.
    plan = json.loads(call(proc.address, "PlanDeployment", "s", token))
    assert plan["plan"]["targets"], plan
    # A changed knob outside the parameters: the range is verified anew.
    _, again = _dynamic(proc.address, _text(nice=3, slack=", timer_slack_ns = 1"))
    assert "covered_by" not in again and len(again["range"]["points"]) == 5
