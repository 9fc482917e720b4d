"""The Kubernetes copies of rules.yml and dashboard.json are up to date (deploy/prometheus/sync_rules.py)."""

from __future__ import annotations

import importlib.util

from tests.deploy.helpers import ROOT


def test_generated_copies_are_current() -> None:
    spec = importlib.util.spec_from_file_location("sync_rules", ROOT / "deploy" / "prometheus" / "sync_rules.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stale = [str(p.relative_to(ROOT)) for p in module.stale()]
    assert not stale, f"stale copies {stale}: run python deploy/prometheus/sync_rules.py"
