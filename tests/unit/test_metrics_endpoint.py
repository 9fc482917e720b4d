"""The scrape endpoint: loopback by default, TLS when given a certificate, the contract's names only."""

import ssl
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from streamlearn.metrics import METRIC_NAMES, Metrics, MetricsConfig
from streamlearn.worker import StepResult


def test_plain_endpoint_on_loopback_serves_the_contract() -> None:
    m = Metrics()
    port = m.serve(MetricsConfig(port=0))
    try:
        m.observe(StepResult(worker=0, records=3))
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        m.close()
    names = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line.startswith("streamlearn_")}
    base = {n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum").removesuffix("_created")
            for n in names}
    assert base <= set(METRIC_NAMES) | {n.removesuffix("_total") for n in METRIC_NAMES}
    assert "streamlearn_model_version" in names


def test_tls_endpoint(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    m = Metrics()
    port = m.serve(MetricsConfig(port=0, tls_certfile=str(cert), tls_keyfile=str(key)))
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        body = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=ctx, timeout=10).read()
        assert b"streamlearn_workers" in body
        with pytest.raises(Exception):  # noqa: B017 (plain HTTP to a TLS port fails one way or another)
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        m.close()


def test_half_tls_config_fails_naming_the_keys() -> None:
    with pytest.raises(ValueError, match="tls_certfile and tls_keyfile"):
        MetricsConfig(port=0, tls_certfile="c.pem")


def test_server_call_time_is_exported_as_a_share_of_step_time() -> None:
    """rate(ps_call_seconds) / rate(worker_step_seconds) is the summary's push_fraction: send, wait and held
    parts (held: the servers still held the reply, the sync round), summed over steps and workers; pushes
    counted."""
    m = Metrics()
    m.observe(StepResult(worker=0, records=10, step_seconds=2.0, push_seconds=0.3, push_wait_seconds=0.1, pushes=3))
    m.observe(StepResult(worker=1, records=10, step_seconds=1.0, push_seconds=0.2, push_wait_seconds=0.2, pushes=1,
                         push_held_seconds=0.15))
    get = m.registry.get_sample_value
    assert get("streamlearn_worker_step_seconds_total") == pytest.approx(3.0)
    assert get("streamlearn_ps_call_seconds_total", {"part": "send"}) == pytest.approx(0.2)
    assert get("streamlearn_ps_call_seconds_total", {"part": "wait"}) == pytest.approx(0.15)
    assert get("streamlearn_ps_call_seconds_total", {"part": "held"}) == pytest.approx(0.15)
    assert get("streamlearn_pushes_total") == 4


def test_known_label_values_are_exported_at_zero_before_their_first_event() -> None:
    """``increase()`` over a series that appears with its first event misses that event: alerts on divergence
    need every kind present from the start."""
    get = Metrics().registry.get_sample_value
    for kind in ("non_finite", "loss_spike", "norm_growth"):
        assert get("streamlearn_divergence_events_total", {"kind": kind}) == 0.0
    assert get("streamlearn_examples_total", {"polarity": "negative"}) == 0.0
    assert get("streamlearn_stale_gradients_total", {"action": "dropped"}) == 0.0
    assert get("streamlearn_events_total", {"topic": "all", "outcome": "expired"}) == 0.0
    assert get("streamlearn_join_feedback_total", {"stage": "arrived"}) == 0.0
    assert get("streamlearn_join_feedback_total", {"stage": "joined"}) == 0.0


def test_the_join_hit_rate_is_joined_over_arrived_feedback() -> None:
    """Feedback that needs its prediction counts as it arrives, and again when it joins (on arrival, or when a
    late prediction comes); the alert StreamlearnJoinHitRateLow divides the two."""
    m = Metrics()
    m.observe(StepResult(worker=0, join=Counter({"feedback": 10, "joined": 3, "inline": 4, "duplicate": 2})))
    m.observe(StepResult(worker=1, join=Counter({"feedback": 6, "joined": 5})))
    get = m.registry.get_sample_value
    assert get("streamlearn_join_feedback_total", {"stage": "arrived"}) == 16
    assert get("streamlearn_join_feedback_total", {"stage": "joined"}) == 8


def test_a_port_in_use_fails_naming_the_flag_and_the_port() -> None:
    first = Metrics()
    port = first.serve(MetricsConfig(port=0))
    try:
        with pytest.raises(ValueError, match=rf"--metrics-port: 127\.0\.0\.1:{port} is already in use"):
            Metrics().serve(MetricsConfig(port=port))
    finally:
        first.close()
