"""The fleet's Prometheus rules and scrape configuration, checked by promtool.

contrib/prometheus/schedcp-rules.yml is unit-tested by
schedcp-rules.test.yml (three hosts: trips, a restart, a failed deployment,
slow restores, a host down); promtool comes from Debian's prometheus
package (requirements-apt.txt).
"""

from __future__ import annotations

import shutil
import subprocess

from tests.harness import ROOT

RULES = ROOT / "contrib" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path, "promtool is missing: Debian's prometheus package (requirements-apt.txt)"
    return subprocess.run([path, *args], cwd=RULES, capture_output=True, text=True, timeout=120)


def test_rules_pass_promtool_check() -> None:
    out = promtool("check", "rules", "schedcp-rules.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 15 rules found" in out.stdout, out.stdout


def test_rules_pass_their_unit_tests() -> None:
    out = promtool("test", "rules", "schedcp-rules.test.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout, out.stdout


def test_rule_unit_tests_can_fail(tmp_path) -> None:
    """A wrong expectation fails: the unit tests are not vacuous."""
    (tmp_path / "schedcp-rules.yml").write_text((RULES / "schedcp-rules.yml").read_text())
    test = (RULES / "schedcp-rules.test.yml").read_text()
    assert "regressions on 2 hosts" in test
    (tmp_path / "wrong.test.yml").write_text(test.replace("regressions on 2 hosts",
                                                          "regressions on 3 hosts"))
    path = shutil.which("promtool")
    assert path
    out = subprocess.run([path, "test", "rules", "wrong.test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "SchedcpRegressionOnSeveralHosts" in out.stdout + out.stderr


def test_scrape_configuration_is_valid() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 1 rule files found" in out.stdout, out.stdout
