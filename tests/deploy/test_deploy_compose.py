"""deploy/compose.yaml starts a learner that can run: its topics exist first, and it checkpoints to a volume."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.deploy.helpers import COMPOSE


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


@pytest.fixture(scope="module")
def volumes() -> dict:
    return yaml.safe_load(COMPOSE.read_text()).get("volumes") or {}


def _args(service: dict) -> list[str]:
    """The service's command line after the `streamlearn` entrypoint."""
    assert service.get("entrypoint") == ["streamlearn"], "run the CLI whatever the Dockerfile's ENTRYPOINT"
    return [str(a) for a in service["command"]]


def _flags(args: list[str]) -> dict[str, str]:
    return {a: (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else "")
            for i, a in enumerate(args) if a.startswith("--")}


def _topic_creators(services: dict) -> list[str]:
    return [name for name, s in services.items() if s.get("command") and _args(s)[:2] == ["topics", "create"]]


def _mounts(service: dict) -> dict[str, str]:
    """target -> source of the service's short-syntax volumes."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
            out[target] = source
        else:
            out[v["target"]] = v.get("source", "")
    return out


def test_the_learner_waits_for_its_topics(services: dict) -> None:
    creators = _topic_creators(services)
    assert len(creators) == 1, f"one service runs `streamlearn topics create`, found {creators}"
    (name,) = creators
    depends = services["learner"]["depends_on"]
    assert isinstance(depends, dict), "long depends_on syntax: the learner needs conditions"
    assert depends[name]["condition"] == "service_completed_successfully", \
        "the learner must start only after the topics exist (else: 'topic ... does not exist', restart loop)"
    creator = services[name]
    assert str(creator.get("restart", "no")) == "no", "a one-shot service must not be restarted"
    assert creator["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert creator["image"] == services["learner"]["image"], "the topics service runs the image the learner builds"
    learner, topics = _flags(_args(services["learner"])[1:]), _flags(_args(creator)[2:])
    for flag in ("--bootstrap-servers", "--predictions-topic", "--feedback-topic", "--dlq-topic"):
        assert learner.get(flag) == topics.get(flag), f"learner and topics service disagree on {flag}"
    assert int(topics.get("--partitions", "4")) >= int(learner.get("--workers", "1")), "a worker would idle"


def test_topics_create_flags_exist(services: dict) -> None:
    exe = shutil.which("streamlearn")
    cmd = [exe] if exe else [sys.executable, "-m", "streamlearn.cli"]
    result = subprocess.run([*cmd, "topics", "create", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    known = set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", result.stdout))
    (name,) = _topic_creators(services)
    unknown = sorted({a for a in _args(services[name]) if a.startswith("--")} - known)
    assert not unknown, f"{name} passes flags `streamlearn topics create` does not have: {unknown}"


def test_the_learner_checkpoints_to_a_named_volume(services: dict, volumes: dict) -> None:
    """Without --checkpoint-dir a restart loses the model, and StreamlearnCheckpointTooOld fires."""
    learner = services["learner"]
    directory = _flags(_args(learner)[1:]).get("--checkpoint-dir")
    assert directory, "the learner must run with --checkpoint-dir"
    source = _mounts(learner).get(directory)
    assert source in volumes, f"{directory} must be a named volume, so checkpoints outlive the container"
    # a new named volume's root belongs to root: a one-shot service hands it to the image's user first
    owners = [n for n, s in services.items() if n != "learner" and _mounts(s).get(directory) == source]
    assert owners, "no service prepares the checkpoint volume"
    for name in owners:
        assert learner["depends_on"][name]["condition"] == "service_completed_successfully", name
        assert str(services[name].get("restart", "no")) == "no", name
