"""The overlays render, and every value of an overlay's settings.yaml lands where it belongs."""

from __future__ import annotations

import re

import pytest

from tests.deploy.helpers import (
    OVERLAYS,
    PLACEHOLDERS,
    flags,
    of_kind,
    one,
    pod_templates,
    render,
    render_text,
    settings,
)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(overlay: str) -> None:
    kinds = {d["kind"] for d in render(overlay)}
    assert {"RayJob", "KafkaTopic", "PersistentVolumeClaim", "ConfigMap", "Service", "ServiceMonitor",
            "PrometheusRule", "NetworkPolicy"} <= kinds
    assert "StreamlearnSettings" not in kinds, "the local-config settings object must not be applied"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_placeholder_survives(overlay: str) -> None:
    text = render_text(overlay)
    left = [p for p in PLACEHOLDERS if re.search(rf"(?<![A-Za-z0-9_.-]){p}(?![A-Za-z0-9_.-])", text)]
    assert not left, f"placeholders not replaced in overlays/{overlay}: {left}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_namespaced_by_the_overlay(overlay: str) -> None:
    namespaces = {d["metadata"].get("namespace") for d in render(overlay)}
    assert len(namespaces) == 1 and None not in namespaces, namespaces


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_reach_their_targets(overlay: str) -> None:
    s = settings(overlay)
    docs = render(overlay)
    job = one(docs, "RayJob")
    spec = job["spec"]

    for role, template in pod_templates(job):
        images = {c["image"] for c in template["spec"]["containers"]}
        assert images == {s["image"]}, (role, images)

    f = flags(spec["entrypoint"])
    assert f["--bootstrap-servers"] == s["kafka"]["bootstrapServers"]
    assert f["--sasl-username"] == s["kafka"]["username"]
    assert f["--workers"] == str(s["learner"]["workers"])
    assert f["--ps-mode"] == s["learner"]["psMode"]
    assert f["--ps-shards"] == str(s["learner"]["psShards"])

    for role, template in pod_templates(job):
        if role == "submitter":
            continue
        secrets = {v["name"]: v["secret"]["secretName"] for v in template["spec"]["volumes"] if "secret" in v}
        assert secrets["kafka-credentials"] == s["kafka"]["credentialsSecret"], role
        if "caSecret" in s["kafka"]:
            assert secrets["kafka-ca"] == s["kafka"]["caSecret"], role

    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == s["ray"]["workerPods"]

    for topic in of_kind(docs, "KafkaTopic"):
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == s["kafka"]["strimziCluster"]
        assert topic["spec"]["partitions"] == s["kafka"]["partitions"]
        assert topic["spec"]["replicas"] == s["kafka"]["replicas"]

    pvc = one(docs, "PersistentVolumeClaim", "streamlearn-checkpoints")["spec"]
    assert pvc["storageClassName"] == s["checkpoints"]["storageClassName"]
    assert pvc["accessModes"] == [s["checkpoints"]["accessMode"]]
    assert pvc["resources"]["requests"]["storage"] == s["checkpoints"]["size"]

    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert one(docs, kind)["metadata"]["labels"]["release"] == s["monitoring"]["prometheusRelease"]
    head_policy = one(docs, "NetworkPolicy", "streamlearn-head-ingress")["spec"]["ingress"]
    selected = [rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for rule in head_policy]
    assert selected == [s["monitoring"]["prometheusNamespace"], s["monitoring"]["kuberayNamespace"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_fit_the_partitions(overlay: str) -> None:
    s = settings(overlay)
    # each worker actor takes whole co-partitioned pairs; a worker without a partition idles
    assert 1 <= s["learner"]["workers"] <= s["kafka"]["partitions"]


def test_dev_and_prod_run_the_same_command_but_for_settings_and_kafka_security() -> None:
    dev, prod = (flags(one(render(o), "RayJob")["spec"]["entrypoint"]) for o in OVERLAYS)
    per_environment = {"--bootstrap-servers", "--sasl-username", "--workers", "--ps-mode", "--ps-shards",
                       "--security-protocol", "--ssl-cafile"}
    assert {k: v for k, v in dev.items() if k not in per_environment} == \
           {k: v for k, v in prod.items() if k not in per_environment}
    assert dev["--security-protocol"] == "SASL_PLAINTEXT" and "--ssl-cafile" not in dev
    assert prod["--security-protocol"] == "SASL_SSL" and prod["--ssl-cafile"]


def test_prod_is_larger_than_dev() -> None:
    dev, prod = settings("dev"), settings("prod")
    assert prod["kafka"]["partitions"] > dev["kafka"]["partitions"]
    assert prod["learner"]["workers"] > dev["learner"]["workers"]
    assert prod["ray"]["workerPods"] > dev["ray"]["workerPods"]
    assert prod["kafka"]["replicas"] >= 3
    assert prod["checkpoints"]["accessMode"] == "ReadWriteMany"  # more than one worker pod writes
