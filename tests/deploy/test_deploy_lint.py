"""yamllint, hadolint and checkov, offline.  CI installs the tools (.ci/requirements-deploy.txt,
.ci/requirements-checkov.txt); a missing tool fails the test rather than skipping it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.deploy.helpers import DOCKERFILE, OVERLAYS, ROOT, as_pod, one, pod_templates, render


def _tool(name: str, env_var: str | None = None) -> str:
    """Path of a command-line tool: $ENV_VAR, PATH, or next to this interpreter (pip scripts)."""
    candidates = [os.environ.get(env_var, "")] if env_var else []
    candidates += [shutil.which(name) or "", str(Path(sys.executable).with_name(name))]
    if name == "checkov":  # its own virtualenv: its pins clash with the project's (packaging, networkx)
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        candidates.append(str(cache / "streamlearn" / "checkov-venv" / "bin" / "checkov"))
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    hint = f" or set {env_var}" if env_var else ""
    raise AssertionError(f"{name} not found: install it (see .ci/requirements-*.txt){hint}")


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT, **kw)  # type: ignore[call-overload]


def test_yamllint() -> None:
    result = _run([sys.executable, "-m", "yamllint", "--strict", "-c", ".yamllint",
                   "deploy", "k8s", ".yamllint", ".hadolint.yaml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint() -> None:
    result = _run([_tool("hadolint"), "--config", ".hadolint.yaml", str(DOCKERFILE.relative_to(ROOT))])
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov(tmp_path: Path) -> None:
    # checkov knows core kinds only: scan the rendered overlays plus the pods
    # the RayJob's templates become.  Skips are annotations on those templates,
    # each with its reason (k8s/base/rayjob.yaml).
    for overlay in OVERLAYS:
        docs = render(overlay)
        job = one(docs, "RayJob")
        docs += [as_pod(job, role, t) for role, t in pod_templates(job)]
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}  # offline: no guideline download
    result = _run([_tool("checkov", "STREAMLEARN_CHECKOV"), "-d", str(tmp_path), "--framework", "kubernetes",
                   "--skip-download", "--compact", "-o", "json"], env=env)
    report = json.loads(result.stdout)
    report = report if isinstance(report, dict) else {"summary": {"failed": 0, "resource_count": 0}}
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert report["summary"]["resource_count"] > 0, "checkov scanned nothing"
    skipped = report["results"]["skipped_checks"]
    assert all(s["check_result"].get("suppress_comment") for s in skipped), "every skip needs a reason"
    pods = {c["resource"] for c in report["results"]["passed_checks"] if c["resource"].startswith("Pod.")}
    assert len(pods) == 2 * 3, f"expected head, worker and submitter pods per overlay, saw {sorted(pods)}"
