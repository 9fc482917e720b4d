"""Every pod the RayJob creates meets the "restricted" Pod Security Standard (and a bit more)."""

from __future__ import annotations

import pytest

from tests.deploy.helpers import OVERLAYS, one, pod_templates, render

# volume types the restricted profile allows
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _templates() -> list[tuple[str, str, dict]]:
    return [(overlay, role, t) for overlay in OVERLAYS
            for role, t in pod_templates(one(render(overlay), "RayJob"))]


@pytest.mark.parametrize(("overlay", "role", "template"), _templates(),
                         ids=[f"{o}-{r}" for o, r, _ in _templates()])
def test_pod_is_restricted(overlay: str, role: str, template: dict) -> None:
    spec = template["spec"]
    pod_sc = spec.get("securityContext", {})
    assert pod_sc.get("runAsNonRoot") is True
    assert pod_sc.get("runAsUser", 1) != 0
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert spec.get("automountServiceAccountToken") is False, "Ray pods do not call the Kubernetes API"
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUMES, (volume["name"], kinds)

    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        where = f"{role}/{c['name']}"
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("privileged") is not True, where
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
        assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, where
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, where
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        assert seccomp in {"RuntimeDefault", "Localhost"}, where
        assert not any(p.get("hostPort") for p in c.get("ports", [])), where
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where} {kind}"
        assert c["image"].split(":")[-1] != "latest" and ":" in c["image"], where


@pytest.mark.parametrize(("overlay", "role", "template"), _templates(),
                         ids=[f"{o}-{r}" for o, r, _ in _templates()])
def test_pod_gets_no_service_link_variables(overlay: str, role: str, template: dict) -> None:
    """Kubernetes would inject STREAMLEARN_METRICS_SERVICE_HOST and friends for the streamlearn-metrics Service;
    they look like settings (the loader ignores them too, tests/unit/test_config.py)."""
    assert template["spec"].get("enableServiceLinks") is False
