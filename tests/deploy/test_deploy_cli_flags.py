"""Every flag the manifests pass to `streamlearn run` exists: checked against `streamlearn run --help`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.deploy.helpers import COMPOSE, OVERLAYS, flags, one, render


@pytest.fixture(scope="module")
def run_help() -> str:
    exe = shutil.which("streamlearn")
    cmd = [exe] if exe else [sys.executable, "-m", "streamlearn.cli"]
    result = subprocess.run([*cmd, "run", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"`streamlearn run --help` failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def _help_flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", text))


def _manifest_commands() -> dict[str, list[str]]:
    """Each place that runs `streamlearn run`, with its argument list (after `run`)."""
    out = {f"k8s/overlays/{o}": one(render(o), "RayJob")["spec"]["entrypoint"].split()[2:] for o in OVERLAYS}
    learner = yaml.safe_load(COMPOSE.read_text())["services"]["learner"]
    command = [str(a) for a in learner["command"]]
    assert command[0] == "run"
    out["deploy/compose.yaml"] = command[1:]
    return out


@pytest.mark.parametrize("where", sorted(_manifest_commands()))
def test_manifest_flags_exist(run_help: str, where: str) -> None:
    known = _help_flags(run_help)
    used = {a for a in _manifest_commands()[where] if a.startswith("--")}
    assert used, where
    unknown = sorted(used - known)
    assert not unknown, f"{where} passes flags `streamlearn run` does not have: {unknown}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ps_mode_is_a_documented_choice(run_help: str, overlay: str) -> None:
    mode = flags(one(render(overlay), "RayJob")["spec"]["entrypoint"])["--ps-mode"]
    assert mode in {"sync", "async", "bounded"}
    assert re.search(rf"\b{mode}\b", run_help), f"--ps-mode {mode} not mentioned by --help"
