"""A real Prometheus server on a free loopback port, for the prometheus tier.

:func:`start_prometheus` runs the binary ($STREAMLEARN_PROMETHEUS, else
``prometheus`` on PATH: Debian's package in CI) with its own storage dir and
a generated config: scrape and rule evaluation every 1 s, the repo's
deploy/prometheus/rules.yml loaded, one job ``streamlearn`` scraping the
given targets. It returns once ``/-/ready`` answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
JOB = "streamlearn"  # the scrape job's name: the `job` label of every scraped series


class PromQLError(AssertionError):
    """The server rejected a query or failed to evaluate it."""


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a success, else PromQLError with the server's message."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422: bad or failed query, with a JSON body saying why
            body = json.load(exc)
        if body.get("status") != "success":
            raise PromQLError(f"{params.get('query', path)}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant vector result of ``expr`` (now, or at unix time ``at``)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value of ``expr``, or None when it returns no series."""
        result = self.query(expr, at)
        assert len(result) <= 1, f"{expr}: expected at most one series, got {len(result)}"
        return float(result[0]["value"][1]) if result else None

    def range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[tuple[float, float]]:
        """(time, value) samples of the single series of ``expr`` over [start, end]."""
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}")
        result = data["result"]
        assert len(result) <= 1, f"{expr}: expected at most one series, got {len(result)}"
        return [(float(t), float(v)) for t, v in result[0]["values"]] if result else []

    def wait_until(self, expr: str, timeout: float, what: str) -> None:
        """Poll ``expr`` until it returns data (a comparison that holds)."""
        deadline = time.monotonic() + timeout
        while not self.query(expr):
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {expr}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def prometheus_binary() -> str:
    path = os.environ.get("STREAMLEARN_PROMETHEUS") or shutil.which("prometheus")
    assert path, "prometheus not found: set STREAMLEARN_PROMETHEUS or put it on PATH (CI installs Debian's package)"
    return path


def start_prometheus(targets: Sequence[str], workdir: Path, ready_timeout: float = 60.0) -> Prometheus:
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited ({proc.returncode}) before ready:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"prometheus not ready after {ready_timeout:.0f} s:\n{log.read_text()}")
        time.sleep(0.2)
