"""The whole driver without Ray: a job on in-process workers and shards (:class:`LocalFleet`), with actors
lost at named moments (hooks, not timing). After each, every event is in the model exactly once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamlearn import config
from streamlearn.config import JobConfig
from streamlearn.job import Hooks, Job
from streamlearn.worker import StepResult
from tests.unit.local_fleet import LocalFleet, stream_lineage

SUMMARY_KEYS = {
    "events_consumed", "examples_positive", "examples_negative", "invalid", "duplicates", "expired",
    "progressive_accuracy", "negative_avoidance", "model_examples_positive", "model_examples_negative",
    "model_examples_by_partition", "offsets", "updates", "stale_dropped", "stale_dropped_examples",
    "divergence_events", "diverged", "rollbacks", "workers", "ps_mode", "ps_shards", "recoveries",
    "records_replayed", "restored_from", "checkpoints", "stop_reason", "seconds", "events_per_second", "pushes",
    "grads_per_push_mean", "push_fraction", "push_to_compute", "push_wait_fraction", "call_overhead_fraction",
    "records", "records_from_checkpoint", "dead_letters", "join_hit_rate", "warnings",
}


def job_config(tmp_path: Path | None = None, **over: Any) -> JobConfig:
    base: dict[str, Any] = {"source": "embedded", "workers": 2, "partitions": 2, "max_records": 100,
                            "sim": {"events": 3000}, "divergence": {"guard": "none"},
                            "ps": {"mode": "async", "grads_per_push": 4, "max_grads_per_push": 4, "shards": 2},
                            "metrics": {"port": None}}
    if tmp_path is not None:
        base["checkpoint"] = {"dir": str(tmp_path), "every_seconds": 0, "every_updates": 40}
    base.update(over)
    return config.load(None, base, env={})


class At(Hooks):
    """Runs ``act(fleet)`` once, at the first moment ``when`` (a hook's name) where ``ready()`` says so."""

    def __init__(self, when: str, act: Callable[[LocalFleet], None], ready: Callable[[Job], bool] = lambda j: True):
        self.when, self.act, self.ready_to = when, act, ready
        self.job: Job | None = None
        self.done = False

    def _at(self, name: str) -> None:
        if name == self.when and not self.done and self.job is not None and self.ready_to(self.job):
            self.done = True
            self.act(self.job.fleet)  # type: ignore[arg-type]

    def folded(self, r: StepResult) -> None:
        self._at("folded")

    def checkpointed(self) -> None:
        self._at("checkpointed")

    def finishing(self) -> None:
        self._at("finishing")


def after_a_checkpoint_and_records(job: Job) -> bool:
    """Two checkpoints written, and records read since the last: a loss now makes the sources replay."""
    return job.checkpoints >= 2 and job.loop.budget.fresh > job.loop.budget.at_save


def assert_every_record_counted(s: dict[str, Any]) -> None:
    """Each record consumed (and each event restored into a join) ends in one part of the breakdown."""
    assert sum(s["records"].values()) == s["events_consumed"] + s["records_from_checkpoint"]


def run(cfg: JobConfig, hooks: At | None = None) -> tuple[Job, dict[str, Any]]:
    job = Job(cfg, hooks=hooks, fleet=LocalFleet)
    if hooks is not None:
        hooks.job = job
    return job, job.run()


def test_a_job_without_ray_holds_every_event_once_and_reports_every_field() -> None:
    cfg = job_config()
    job, s = run(cfg)
    assert set(s) == SUMMARY_KEYS
    assert s["model_examples_by_partition"] == stream_lineage(cfg)
    assert s["stop_reason"] == "end_of_stream" and s["recoveries"] == 0 and s["checkpoints"] == 0
    assert s["events_consumed"] == sum(s["offsets"].values())
    assert sum(s["records"].values()) == s["events_consumed"]  # each record in one part of the breakdown
    assert s["records"]["example"] > 0 and s["warnings"] == []
    assert len(job.weights) == 2 and job.fleet.calls["close"] == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("victim", ["worker", "shard"])
def test_an_actor_lost_mid_stream_is_recovered_exactly_once(tmp_path: Path, victim: str) -> None:
    cfg = job_config(tmp_path)
    kill = At("folded", lambda f: f.kill(**{victim: 0}), after_a_checkpoint_and_records)
    _, s = run(cfg, kill)
    assert kill.done and s["recoveries"] == 1 and s["records_replayed"] > 0
    assert s["model_examples_by_partition"] == stream_lineage(cfg)
    assert_every_record_counted(s)
    assert s["records"]["rewound"] > 0 and s["records_from_checkpoint"] > 0


@pytest.mark.parametrize("victim", ["worker", "shard"])
def test_an_actor_lost_before_the_final_reads_does_not_crash_the_job(tmp_path: Path, victim: str) -> None:
    """The final checkpoint is written; an actor dies before the final weights and positions are read: the
    job restores from that checkpoint (nothing to replay) and finishes."""
    cfg = job_config(tmp_path)
    _, s = run(cfg, At("finishing", lambda f: f.kill(**{victim: 1})))
    assert s["recoveries"] == 1 and s["records_replayed"] == 0 and s["stop_reason"] == "end_of_stream"
    assert s["model_examples_by_partition"] == stream_lineage(cfg)
    assert_every_record_counted(s)


@pytest.mark.parametrize("victim", ["worker", "shard"])
def test_an_actor_restarted_unnoticed_is_caught_before_its_state_is_reported(tmp_path: Path, victim: str) -> None:
    """A restarted actor may answer the final reads with fresh state (no call failed): the reads are checked,
    and the job recovers and reports the model the stream made, not an empty one."""
    import numpy as np

    cfg = job_config(tmp_path)
    reference = run(job_config(tmp_path / "reference"))[0].weights
    job, s = run(cfg, At("finishing", lambda f: f.kill(**{victim: 0}, silent=True)))
    assert s["recoveries"] == 1 and s["model_examples_by_partition"] == stream_lineage(cfg)
    assert sum(s["offsets"].values()) == s["events_consumed"]
    assert_every_record_counted(s)
    for a, b in zip(job.weights, reference, strict=True):
        np.testing.assert_allclose(a, b)


def test_an_actor_lost_during_a_checkpoint_write_is_recovered(tmp_path: Path) -> None:
    cfg = job_config(tmp_path)
    kill = At("checkpointed", lambda f: f.kill(worker=0), lambda j: j.checkpoints == 2)
    _, s = run(cfg, kill)
    assert kill.done and s["recoveries"] == 1
    assert s["model_examples_by_partition"] == stream_lineage(cfg)


def test_max_events_counts_a_replayed_record_once(tmp_path: Path) -> None:
    cfg = job_config(tmp_path, stop={"max_events": 5000})
    _, s = run(cfg, At("folded", lambda f: f.kill(worker=1), after_a_checkpoint_and_records))
    assert s["recoveries"] == 1 and s["records_replayed"] > 0 and s["stop_reason"] == "max_events"
    assert sum(s["offsets"].values()) == 5000
    assert s["events_consumed"] == 5000 + s["records_replayed"]
    assert_every_record_counted(s)


def test_without_checkpoints_a_lost_actor_is_an_error_that_says_so() -> None:
    with pytest.raises(RuntimeError, match="--checkpoint-dir"):
        run(job_config(), At("folded", lambda f: f.kill(worker=0)))


def test_a_restarted_job_resumes_and_a_regrouped_one_too(tmp_path: Path) -> None:
    """Stop after some records; a second run (with one worker instead of two: the checkpoint's workers are
    regrouped) restores and reads only the rest."""
    first = run(job_config(tmp_path, stop={"max_events": 2000}))[1]
    assert first["events_consumed"] == 2000 and first["checkpoints"] >= 1
    assert_every_record_counted(first)
    assert first["records"]["pending"] > 0
    cfg = job_config(tmp_path, workers=1)
    second = run(cfg)[1]
    assert second["restored_from"] is not None and second["workers"] == 1
    assert second["model_examples_by_partition"] == stream_lineage(cfg)
    assert first["events_consumed"] + second["events_consumed"] == sum(second["offsets"].values())
    # the second run finished what the first left in its joins
    assert second["records_from_checkpoint"] == first["records"]["pending"]
    assert_every_record_counted(second)


class KillAtCall(LocalFleet):
    """Kills worker 0 the first time ``call`` runs (``restore``: inside a recovery; ``drain``: a drain step)."""

    call = ""

    def __init__(self, cfg: JobConfig, assignment: list[list[int]]) -> None:
        super().__init__(cfg, assignment)
        self.fired = False

    def _fire(self, name: str) -> None:
        if name == self.call and not self.fired:
            self.fired = True
            self.kill(worker=0)

    def restore(self, states: list[dict[str, Any]]) -> None:
        self._fire("restore")
        super().restore(states)

    def result(self, step: Any) -> StepResult:
        if self._queued[step][2]:
            self._fire("drain")
        return super().result(step)


@pytest.mark.parametrize("call", ["restore", "drain"])
def test_an_actor_lost_during_a_recovery_or_the_drain_is_recovered(tmp_path: Path, call: str) -> None:
    """A second loss while the first recovery restores (it restores again), or a loss in the job's last steps
    (it recovers, replays and drains again): either way every event is in the model once."""
    cfg = job_config(tmp_path)
    fleet = type("Fleet", (KillAtCall,), {"call": call})
    hooks = At("folded", lambda f: f.kill(worker=1), after_a_checkpoint_and_records) if call == "restore" else None
    job = Job(cfg, hooks=hooks, fleet=fleet)
    if hooks is not None:
        hooks.job = job
    s = job.run()
    assert job.fleet.fired  # type: ignore[attr-defined]
    assert s["recoveries"] >= 1 and s["model_examples_by_partition"] == stream_lineage(cfg)
    assert_every_record_counted(s)
