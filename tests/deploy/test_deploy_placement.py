"""The learner actors run on the worker pods, never on the head.

They ask for 0 CPUs, so the head's num-cpus 0 does not keep them off it
(ray-project/ray#41824). The worker groups offer a custom Ray resource the head
does not, and `streamlearn run --actor-resource NAME` makes every actor ask for
a little of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.deploy.helpers import OVERLAYS, flags, one, render

ACTOR_RESOURCE = "streamlearn"


def _offered(ray_start_params: dict[str, str]) -> dict[str, float]:
    """The custom resources a group's `ray start` offers: KubeRay's format is a JSON object inside a
    double-quoted string, '"{\\"name\\": 1}"'."""
    raw = ray_start_params.get("resources")
    if raw is None:
        return {}
    assert raw.startswith('"') and raw.endswith('"'), f"resources must be a quoted JSON object, got {raw!r}"
    offered = json.loads(json.loads(raw))
    assert isinstance(offered, dict), raw
    return offered


@pytest.fixture(scope="module")
def cli_has_actor_resource() -> bool:
    exe = shutil.which("streamlearn")
    cmd = [exe] if exe else [sys.executable, "-m", "streamlearn.cli"]
    result = subprocess.run([*cmd, "run", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return "--actor-resource" in result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_worker_pods_offer_the_actor_resource(overlay: str) -> None:
    cluster = one(render(overlay), "RayJob")["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0", "no CPU-requesting task on the head"
    assert ACTOR_RESOURCE not in _offered(head), "the head must not offer the actors' resource"
    for group in cluster["workerGroupSpecs"]:
        amount = _offered(group["rayStartParams"]).get(ACTOR_RESOURCE, 0)
        assert amount >= 1, f"worker group {group['groupName']} must offer {ACTOR_RESOURCE}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_entrypoint_places_the_actors(overlay: str, cli_has_actor_resource: bool) -> None:
    """Once `streamlearn run` has --actor-resource the entrypoint must pass it, naming the workers' resource."""
    f = flags(one(render(overlay), "RayJob")["spec"]["entrypoint"])
    if cli_has_actor_resource:
        assert "--actor-resource" in f, "without --actor-resource the actors may all land on the head"
    if "--actor-resource" in f:
        assert f["--actor-resource"] == ACTOR_RESOURCE
