"""Fault tolerance: a killed worker, a killed server, a SIGKILLed job, each at an explicit moment.

The moment of each fault is a named point of the job (a hook: after a step's result was folded, after a
checkpoint, before the final reads), not a wall-clock condition, so a test means the same on a fast or a slow
machine. After each, every event up to the end is in the surviving model exactly once: the lineage counts
per partition equal a single-process pass over the same stream.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from ray_helpers import heldout_accuracy, job_config, single_process

from streamlearn.job import Hooks, Job

pytestmark = pytest.mark.ray

EVENTS = 30_000
CHECKPOINT = {"every_seconds": 0, "every_updates": 500}  # checkpoints at points of the stream, not of time


def _expected() -> dict[str, int]:
    _, per_partition = single_process(job_config(sim={"events": EVENTS}))
    return {str(p): n for p, n in sorted(per_partition.items())}


class Kill(Hooks):
    """Kills a worker or a server actor (Ray restarts it) once, at the hook ``at``: "folded" once two
    checkpoints are written and records were read since the last, so the recovery replays; or "finishing"."""

    def __init__(self, job: Job, victim: str, at: str) -> None:
        self.job, self.victim, self.at = job, victim, at
        self.killed = False

    def _kill(self, at: str) -> None:
        if self.killed or at != self.at:
            return
        fleet = self.job.fleet
        ray.kill(fleet.handles[0] if self.victim == "worker" else fleet.shards[0], no_restart=False)
        self.killed = True

    def folded(self, r) -> None:
        budget = self.job.loop.budget
        if self.job.checkpoints >= 2 and budget.fresh > budget.at_save:
            self._kill("folded")

    def finishing(self) -> None:
        self._kill("finishing")


def _run_and_kill(tmp_path: Path, victim: str, mode: str, at: str = "folded", max_events: int | None = None):
    cfg = job_config(workers=2, ps={"mode": mode}, sim={"events": EVENTS}, max_records=500,
                     checkpoint={"dir": str(tmp_path), **CHECKPOINT}, stop={"max_events": max_events})
    job = Job(cfg)
    kill = job.hooks = Kill(job, victim, at)
    summary = job.run()
    assert kill.killed, "the job ended before the moment of the kill"
    return cfg, job, summary


@pytest.mark.parametrize(("victim", "mode"), [("worker", "async"), ("server", "async"), ("server", "sync")])
def test_killed_actor_recovers_exactly_once(ray_cluster, tmp_path: Path, victim: str, mode: str) -> None:
    cfg, job, summary = _run_and_kill(tmp_path, victim, mode)
    assert summary["recoveries"] >= 1 and summary["records_replayed"] > 0
    assert summary["model_examples_by_partition"] == _expected()
    assert heldout_accuracy(cfg, job) > 0.9


@pytest.mark.parametrize("victim", ["worker", "server"])
def test_an_actor_killed_before_the_final_reads_does_not_crash_the_job(ray_cluster, tmp_path: Path,
                                                                       victim: str) -> None:
    """The job drained and wrote its final checkpoint; an actor dies before the final weights and positions
    are read (it is restarting, or answers from fresh state): the job recovers from that checkpoint and
    finishes, exactly once."""
    cfg, job, summary = _run_and_kill(tmp_path, victim, "async", at="finishing")
    assert summary["recoveries"] >= 1 and summary["stop_reason"] == "end_of_stream"
    assert summary["model_examples_by_partition"] == _expected()
    assert sum(summary["offsets"].values()) == summary["events_consumed"] - summary["records_replayed"]
    assert heldout_accuracy(cfg, job) > 0.9


def test_max_events_counts_a_replayed_record_once(ray_cluster, tmp_path: Path) -> None:
    """After a recovery the sources replay what followed the checkpoint; --max-events still means that many
    records of the stream: the final positions add up to it."""
    _, _, summary = _run_and_kill(tmp_path, "worker", "async", max_events=36_000)
    assert summary["recoveries"] >= 1 and summary["stop_reason"] == "max_events"
    assert sum(summary["offsets"].values()) == 36_000
    assert summary["events_consumed"] == 36_000 + summary["records_replayed"]


# The first run of the SIGKILL test: the demo's job, which stops (stalls) in its second checkpoint's hook and
# says so; the test then kills the driver and its local Ray mid-stream.
STALLED_DEMO = r"""
import json, sys, time
from streamlearn.cli import loopback_ray
loopback_ray()
from streamlearn import config
from streamlearn.job import Hooks, Job

class Stall(Hooks):
    def checkpointed(self):
        if job.checkpoints == 2:
            print("checkpointed", flush=True)
            time.sleep(600)

job = Job(config.load(None, json.loads(sys.argv[1])), hooks=Stall())
job.run()
"""


def test_sigkilled_job_restarted_with_the_same_config_resumes(tmp_path: Path) -> None:
    flags = ["--events", str(EVENTS), "--workers", "2", "--checkpoint-dir", str(tmp_path),
             "--checkpoint-every-seconds", "0", "--checkpoint-every-updates", "500", "--ray-num-cpus", "2"]
    same = {"source": "embedded", "sim": {"events": EVENTS}, "workers": 2, "ray": {"num_cpus": 2},
            "checkpoint": {"dir": str(tmp_path), **CHECKPOINT}}
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    first = subprocess.Popen([sys.executable, "-c", STALLED_DEMO, json.dumps(same)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=env, text=True, start_new_session=True)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "checkpointed"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
        first.wait(timeout=60)
    second = subprocess.run([sys.executable, "-m", "streamlearn.cli", "demo", *flags], capture_output=True,
                            text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["restored_from"] is not None and summary["events_consumed"] > 0  # it resumed mid-stream
    assert summary["model_examples_by_partition"] == _expected()
    assert summary["heldout_accuracy"] > 0.9  # the demo scores its model


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
