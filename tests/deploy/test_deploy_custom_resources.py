"""Custom resources carry the fields their operators need, and the objects reference each other correctly."""

from __future__ import annotations

import json
import re
import tomllib
from importlib import metadata

import pytest
import yaml

from tests.deploy.helpers import (
    DASHBOARD,
    DOCKERFILE,
    OVERLAYS,
    ROOT,
    RULES,
    flags,
    labels_match,
    of_kind,
    one,
    pod_templates,
    render,
)


def _containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def _mounts(template: dict) -> dict[str, str]:
    """volume name -> mount path in the template's first (Ray) container."""
    return {m["name"]: m["mountPath"] for m in _containers(template)[0].get("volumeMounts", [])}


def _volumes(template: dict) -> dict[str, dict]:
    return {v["name"]: v for v in template["spec"].get("volumes", [])}


# ------------------------------------------------------------------ RayJob
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjob_has_what_kuberay_needs(overlay: str) -> None:
    job = one(render(overlay), "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("streamlearn run ")
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["backoffLimit"] >= 1, "a failed driver must be retried (it resumes from its checkpoint)"
    assert spec["submitterConfig"]["backoffLimit"] >= 1
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert "activeDeadlineSeconds" not in spec, "a streaming job has no deadline"

    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}, "Ray token authentication must be on"
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert _containers(head["template"]), "head pod template needs a container"
    assert cluster["workerGroupSpecs"], "at least one worker group"
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"]
        assert isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert _containers(group["template"])
    submitter = spec["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never"
    assert "command" not in submitter["containers"][0], "KubeRay fills in the submit command"


def _project_ray_version() -> str:
    """The Ray the project runs: its exact pin in pyproject.toml, else the installed one."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        pin = re.fullmatch(r"ray(\[[^\]]*\])?\s*==\s*([\w.]+)", dep.strip())
        if pin:
            return pin.group(2)
    return metadata.version("ray")


def test_ray_version_matches_the_image_and_the_project() -> None:
    dockerfile = DOCKERFILE.read_text()
    declared = re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M)
    assert declared, "Dockerfile must declare ARG RAY_VERSION=..."
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-cpu", dockerfile, re.M)
    version = _project_ray_version()
    assert declared.group(1) == version, "the base image must carry the Ray the project runs"
    for overlay in OVERLAYS:
        assert one(render(overlay), "RayJob")["spec"]["rayClusterSpec"]["rayVersion"] == version


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_entrypoint_paths_are_mounted(overlay: str) -> None:
    docs = render(overlay)
    job = one(docs, "RayJob")
    f = flags(job["spec"]["entrypoint"])
    for role, template in pod_templates(job):
        if role == "submitter":
            continue  # only runs `ray job submit`; the driver runs on the head
        mounts, volumes = _mounts(template), _volumes(template)
        assert f["--config"].startswith(mounts["config"] + "/")
        config_map = one(docs, "ConfigMap", volumes["config"]["configMap"]["name"])
        assert f["--config"].rsplit("/", 1)[1] in config_map["data"]
        assert f["--sasl-password-file"] == mounts["kafka-credentials"] + "/password"
        assert {"key": "password", "path": "password"} in volumes["kafka-credentials"]["secret"]["items"]
        assert f["--checkpoint-dir"] == mounts["checkpoints"]
        claim = volumes["checkpoints"]["persistentVolumeClaim"]["claimName"]
        one(docs, "PersistentVolumeClaim", claim)
        if "--ssl-cafile" in f:
            assert f["--ssl-cafile"] == mounts["kafka-ca"] + "/ca.crt"
        env = {e["name"] for c in _containers(template) for e in c.get("env", [])}
        assert not any("PASSWORD" in name for name in env), "the password comes from a mounted file"


def test_no_literal_secret_in_any_manifest() -> None:
    for overlay in OVERLAYS:
        docs = render(overlay)
        assert not of_kind(docs, "Secret"), "Secrets are created out of band, never rendered from git"
        job = one(docs, "RayJob")
        for _, template in pod_templates(job):
            for c in _containers(template):
                for e in c.get("env", []):
                    assert "value" not in e or not re.search("pass|secret|token", e["name"], re.I), e


# ------------------------------------------------------------------ Strimzi
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_topics(overlay: str) -> None:
    docs = render(overlay)
    topics = of_kind(docs, "KafkaTopic")
    f = flags(one(docs, "RayJob")["spec"]["entrypoint"])
    names = {t["spec"]["topicName"] for t in topics}
    assert names == {f["--predictions-topic"], f["--feedback-topic"], f["--dlq-topic"]}
    for t in topics:
        assert t["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert t["metadata"]["labels"]["strimzi.io/cluster"], "the Topic Operator selects topics by this label"
        assert isinstance(t["spec"]["partitions"], int) and t["spec"]["partitions"] >= 1
        assert isinstance(t["spec"]["replicas"], int) and t["spec"]["replicas"] >= 1
        min_isr = t["spec"].get("config", {}).get("min.insync.replicas")
        if min_isr is not None:
            assert int(min_isr) < t["spec"]["replicas"], "min.insync.replicas must leave room for one broker down"
    partitions = {t["spec"]["partitions"] for t in topics}
    assert len(partitions) == 1, f"predictions, feedback and dlq need equal partitions, got {partitions}"
    assert len({t["metadata"]["labels"]["strimzi.io/cluster"] for t in topics}) == 1


# ------------------------------------------------------------------ monitoring
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_service_selects_only_the_head_and_its_port(overlay: str) -> None:
    docs = render(overlay)
    service = one(docs, "Service", "streamlearn-metrics")
    job = one(docs, "RayJob")
    f = flags(job["spec"]["entrypoint"])
    selected = [role for role, t in pod_templates(job) if labels_match(service["spec"]["selector"],
                                                                        t["metadata"]["labels"])]
    assert selected == ["head"], "the driver (and its metrics endpoint) runs on the head pod"
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in _containers(head)[0]["ports"]}
    (port,) = service["spec"]["ports"]
    assert ports[port["targetPort"]] == int(f["--metrics-port"]) == port["port"]
    assert f["--metrics-host"] == "0.0.0.0"
    assert service["spec"]["type"] == "ClusterIP"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_matches_the_service(overlay: str) -> None:
    docs = render(overlay)
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service", "streamlearn-metrics")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    same_namespace = monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert same_namespace or "namespaceSelector" in monitor["spec"]
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
    # job="streamlearn" as in deploy/prometheus/prometheus.yml
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "streamlearn"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheusrule_is_rules_yml(overlay: str) -> None:
    rule = one(render(overlay), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboard_configmap_is_the_dashboard(overlay: str) -> None:
    dashboards = [c for c in of_kind(render(overlay), "ConfigMap")
                  if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert len(dashboards) == 1, "one ConfigMap labelled for the Grafana sidecar"
    (text,) = dashboards[0]["data"].values()
    assert text == DASHBOARD.read_text()
    assert json.loads(text)["uid"] == "streamlearn"


# ------------------------------------------------------------------ network policy
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(overlay: str) -> None:
    docs = render(overlay)
    job = one(docs, "RayJob")
    templates = dict(pod_templates(job))
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(docs, "NetworkPolicy")}

    internal = policies["streamlearn-ray-internal"]
    assert internal["policyTypes"] == ["Ingress"]
    for role, t in templates.items():
        assert labels_match(internal["podSelector"]["matchLabels"], t["metadata"]["labels"]), role
    (rule,) = internal["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "Ray ports are open to this job's pods only"
    for role, t in templates.items():
        assert labels_match(peer["podSelector"]["matchLabels"], t["metadata"]["labels"]), role

    head = policies["streamlearn-head-ingress"]
    selected = [r for r, t in templates.items() if labels_match(head["podSelector"]["matchLabels"],
                                                               t["metadata"]["labels"])]
    assert selected == ["head"]
    metrics_port = int(flags(job["spec"]["entrypoint"])["--metrics-port"])
    allowed = {}
    for rule in head["ingress"]:
        assert rule.get("from"), "no rule may admit every source"
        (peer,) = rule["from"]
        assert {"namespaceSelector", "podSelector"} <= set(peer), "a named namespace and named pods"
        (port,) = rule["ports"]
        allowed[peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]] = port["port"]
    assert allowed == {"prometheus": metrics_port, "kuberay-operator": 8265}


def test_the_image_passes_ray_calls_inline_as_a_local_job_does() -> None:
    """Every Ray process in the image gets the inline-call size a local `streamlearn run` sets, and no pod
    template sets it otherwise (a sparse model's pushes would go through the object store)."""
    from streamlearn.actors import INLINE_BYTES, INLINE_ENV

    set_to = re.search(rf"^\s*{INLINE_ENV}=(\d+)\s*$", DOCKERFILE.read_text(), re.M)
    assert set_to and int(set_to.group(1)) == INLINE_BYTES
    for overlay in OVERLAYS:
        for _, template in pod_templates(one(render(overlay), "RayJob")):
            for container in template["spec"]["containers"]:
                assert all(e["name"] != INLINE_ENV for e in container.get("env", []))
