"""Core objects, and the pods the RayJob's templates become, validate against the Kubernetes schemas."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.deploy.helpers import OVERLAYS, as_pod, one, pod_templates, render

# A version kubernetes-validate ships schemas for; KubeRay >= 1.5 and Strimzi support it.
KUBERNETES_VERSION = "1.33.0"
CORE_KINDS = {"ConfigMap", "Service", "PersistentVolumeClaim", "NetworkPolicy", "Secret", "ServiceAccount"}


def _objects() -> list[tuple[str, dict]]:
    out = []
    for overlay in OVERLAYS:
        docs = render(overlay)
        out += [(overlay, d) for d in docs if d["kind"] in CORE_KINDS]
        job = one(docs, "RayJob")
        out += [(overlay, as_pod(job, role, t)) for role, t in pod_templates(job)]
    return out


@pytest.mark.parametrize(("overlay", "obj"), _objects(),
                         ids=[f"{o}-{d['kind']}-{d['metadata']['name']}" for o, d in _objects()])
def test_validates_strictly(overlay: str, obj: dict) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{overlay} {obj['kind']}/{obj['metadata']['name']} at {path}: {exc.message}")
