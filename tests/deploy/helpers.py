"""Shared helpers for the offline deployment checks (tests/deploy).

Renders the kustomize overlays with `kubectl kustomize` (or `kustomize build`),
pulls pod templates out of the RayJob, and extracts metric names from PromQL.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod")
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
COMPOSE = ROOT / "deploy" / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

# Placeholders in k8s/base and k8s/components that components/settings must
# replace; none may survive in a rendered overlay.
PLACEHOLDERS = (
    "IMAGE", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_USERNAME", "WORKERS", "PS_MODE", "PS_SHARDS",
    "KAFKA_CREDENTIALS_SECRET", "KAFKA_CA_SECRET", "KAFKA_CLUSTER", "STORAGE_CLASS",
    "PROMETHEUS_RELEASE", "PROMETHEUS_NAMESPACE", "KUBERAY_NAMESPACE",
)

Doc = dict[str, Any]


@functools.cache
def _kubectl_has_kustomize_v5() -> bool:
    """kubectl embeds kustomize; components and replacements need v5 (kubectl >= 1.27)."""
    if not shutil.which("kubectl"):
        return False
    out = subprocess.run(["kubectl", "version", "--client", "-o", "json"], capture_output=True, text=True,
                         check=False).stdout
    match = re.search(r'"kustomizeVersion":\s*"v(\d+)', out)
    return match is not None and int(match.group(1)) >= 5


def kustomize_command(path: Path) -> list[str]:
    """`kubectl kustomize PATH` (kustomize v5 inside), else `kustomize build PATH`."""
    if _kubectl_has_kustomize_v5():
        return ["kubectl", "kustomize", str(path)]
    built = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamlearn" / "go-bin" / "kustomize"
    found = shutil.which("kustomize") or (str(built) if built.is_file() else None)  # dev-setup.sh builds one
    if found:
        return [found, "build", str(path)]
    raise AssertionError("need kubectl >= 1.27 or kustomize v5 on PATH (deploy/dev-setup.sh builds one with Go)")


@functools.cache
def render_text(overlay: str) -> str:
    """The overlay's rendered manifests (cached: kustomize runs once per overlay)."""
    result = subprocess.run(kustomize_command(K8S / "overlays" / overlay),
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"kustomize failed for overlays/{overlay}:\n{result.stderr}")
    return result.stdout


def render(overlay: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(render_text(overlay)) if d]


def settings(overlay: str) -> Doc:
    """spec of the overlay's StreamlearnSettings (the values a user edits)."""
    doc = yaml.safe_load((K8S / "overlays" / overlay / "settings.yaml").read_text())
    assert doc["kind"] == "StreamlearnSettings"
    return doc["spec"]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_templates(rayjob: Doc) -> Iterator[tuple[str, Doc]]:
    """(role, pod template) for the head, every worker group and the submitter."""
    spec = rayjob["spec"]
    yield "head", spec["rayClusterSpec"]["headGroupSpec"]["template"]
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        yield f"worker:{group['groupName']}", group["template"]
    if "submitterPodTemplate" in spec:
        yield "submitter", spec["submitterPodTemplate"]


def as_pod(rayjob: Doc, role: str, template: Doc) -> Doc:
    """A Pod built from a RayJob pod template, for validators that know only core kinds."""
    meta = dict(template.get("metadata") or {})
    meta["name"] = f"{rayjob['metadata']['name']}-{role.replace(':', '-')}"
    if "namespace" in rayjob["metadata"]:
        meta["namespace"] = rayjob["metadata"]["namespace"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}


def flags(command: str) -> dict[str, str]:
    """{--flag: value} of a command line ("" for a flag followed by another flag or nothing)."""
    tokens = shlex.split(command)
    out: dict[str, str] = {}
    for i, tok in enumerate(tokens):
        if tok.startswith("--"):
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            out[tok] = "" if nxt.startswith("--") else nxt
    return out


def labels_match(selector: dict[str, str], labels: dict[str, str] | None) -> bool:
    return all((labels or {}).get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------ PromQL
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan", "atan2", "start", "end",
}
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (not functions, keywords, labels or durations)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", "", s)          # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)         # range / subquery durations
    s = _LABEL_LISTS.sub(" ", s)             # by (...), on (...), ...
    s = re.sub(r"\$\w+", " ", s)             # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word = m.group(0)
        before = s[m.start() - 1] if m.start() else ""
        after = s[m.end():].lstrip()[:1]
        if after == "(" or word.lower() in _KEYWORDS or before.isdigit() or before == ".":
            continue  # functions and aggregations, keywords, parts of numbers (1e3)
        names.add(word)
    return names


_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def in_contract(metric: str, contract: Any) -> bool:
    """metric is exported by the contract: as declared, or as a histogram's or counter's series."""
    candidates = {metric} | {metric[: -len(s)] for s in _SUFFIXES if metric.endswith(s)}
    return any(c in contract or f"{c}_total" in contract for c in candidates)


def rules_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r.get("alert") or r["record"]: r["expr"] for g in groups for r in g["rules"]}


def dashboard_targets(dashboard: Doc) -> Iterator[tuple[Doc, Doc]]:
    """(panel, target) for every query of every panel, rows' nested panels included."""
    for panel in dashboard["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                yield p, t
