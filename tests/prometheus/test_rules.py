"""The alert rules load in Prometheus and behave as rules_test.yml says (promtool, offline)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not on PATH (CI installs Debian's prometheus package)"
    return path


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, check=False)


def test_rules_load(promtool: str) -> None:
    result = _promtool(promtool, "check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests(promtool: str) -> None:
    result = _promtool(promtool, "test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    import yaml

    alerts = {r["alert"] for g in yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    fired: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert alerts == fired, f"alerts never tested firing: {sorted(alerts - fired)}"
    assert alerts == silent, f"alerts never tested silent: {sorted(alerts - silent)}"
