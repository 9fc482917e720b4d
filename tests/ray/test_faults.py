"""Fault tolerance (bounded in time): a killed worker, a killed server, a SIGKILLed job.

After each, every event up to the end is in the surviving model exactly once:
the lineage counts per partition equal a single-process pass over the same stream.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
from ray_helpers import job_config, single_process

from streamlearn.job import Job

pytestmark = pytest.mark.ray

EVENTS = 30_000


def _expected() -> dict[str, int]:
    _, per_partition = single_process(job_config(sim={"events": EVENTS}))
    return {str(p): n for p, n in sorted(per_partition.items())}


def _run_and_kill(tmp_path: Path, victim: str, mode: str, max_events: int | None = None) -> dict:
    cfg = job_config(workers=2, ps={"mode": mode}, sim={"events": EVENTS}, max_records=500,
                     checkpoint={"dir": str(tmp_path), "every_seconds": 0.5}, stop={"max_events": max_events})
    job = Job(cfg)
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(job.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while (job.checkpoints < 2 or job.totals.records < 10_000) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.checkpoints >= 2, "the job never checkpointed"
    actor = job.workers[0] if victim == "worker" else job.shards[0]
    ray.kill(actor, no_restart=False)  # Ray restarts it (max_restarts); the job must recover
    thread.join(timeout=240)
    assert not thread.is_alive(), "the job did not finish after the failure"
    return out


@pytest.mark.parametrize(("victim", "mode"), [("worker", "async"), ("server", "async"), ("server", "sync")])
def test_killed_actor_recovers_exactly_once(ray_cluster, tmp_path: Path, victim: str, mode: str) -> None:
    summary = _run_and_kill(tmp_path, victim, mode)
    assert summary["recoveries"] >= 1
    assert summary["model_examples_by_partition"] == _expected()
    assert summary["heldout_accuracy"] > 0.9


def test_max_events_counts_a_replayed_record_once(ray_cluster, tmp_path: Path) -> None:
    """After a recovery the sources replay what followed the checkpoint; --max-events still means that many
    records of the stream: the final positions add up to it."""
    summary = _run_and_kill(tmp_path, "worker", "async", max_events=36_000)
    assert summary["recoveries"] >= 1 and summary["stop_reason"] == "max_events"
    assert sum(summary["offsets"].values()) == 36_000
    assert summary["events_consumed"] == 36_000 + summary["records_replayed"]


def test_sigkilled_job_restarted_with_the_same_config_resumes(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "streamlearn.cli", "demo", "--events", str(EVENTS), "--workers", "2",
           "--checkpoint-dir", str(tmp_path), "--checkpoint-every-seconds", "0.5", "--ray-num-cpus", "2"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("checkpoint-*.slck"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(tmp_path.glob("checkpoint-*.slck")), "no checkpoint before the kill"
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
    first.wait(timeout=30)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["restored_from"] is not None
    assert summary["model_examples_by_partition"] == _expected()
    assert summary["heldout_accuracy"] > 0.9


def test_corrupt_newest_checkpoint_is_skipped(tmp_path: Path, caplog) -> None:
    from streamlearn import checkpoint

    checkpoint.save(tmp_path, {"version": 1}, keep=3)
    time.sleep(0.01)
    bad = checkpoint.save(tmp_path, {"version": 2}, keep=3)
    bad.write_bytes(bad.read_bytes()[:-10])  # a torn write
    with caplog.at_level("WARNING"):
        found = checkpoint.latest(tmp_path)
    assert found is not None and found[1]["version"] == 1
    assert "checksum mismatch" in caplog.text
