"""The job's small parts on their own: the stop conditions, the guard acting on the shards, the summary."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest

from streamlearn.config import JobConfig, StopConfig
from streamlearn.divergence import DivergenceConfig, GuardPolicy
from streamlearn.job.budget import RecordBudget
from streamlearn.job.guard import ShardGuard
from streamlearn.job.stop import Stop
from streamlearn.job.summary import Ending, Totals, positions, summarize
from streamlearn.metrics import Metrics
from streamlearn.worker import StepResult


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_stop_conditions_each_name_their_reason() -> None:
    budget = RecordBudget(max_events=None, max_records=100, workers=2, sync=False)
    clock = Clock()
    idle = Stop(StopConfig(until_idle=5.0, max_seconds=60.0), embedded=False, clock=clock)
    clock.now = 4.0
    assert not idle.check(budget, 0, 2)
    idle.arrived()
    clock.now = 8.9
    assert not idle.check(budget, 0, 2)
    clock.now = 9.0
    assert idle.check(budget, 0, 2) and idle.reason == "until_idle"
    clock.now = 0.0
    embedded = Stop(StopConfig(), embedded=True, clock=clock)
    assert not embedded.check(budget, 1, 2) and embedded.check(budget, 2, 2) and embedded.reason == "end_of_stream"
    asked = Stop(StopConfig(), embedded=True, clock=clock)
    asked.request("SIGTERM")
    assert asked.check(budget, 2, 2) and asked.reason == "SIGTERM"  # the first reason wins


def test_a_stop_for_where_the_stream_stood_is_undone_by_a_rewind() -> None:
    budget = RecordBudget(max_events=100, max_records=100, workers=1, sync=False)
    stop = Stop(StopConfig(max_events=100), embedded=True)
    budget.took(StepResult(0, records=100))
    assert stop.check(budget, 0, 1) and stop.reason == "max_events"
    budget.rewound()  # no checkpoint since the start: all 100 come again
    stop.resume(budget, rewound=True)
    assert not stop.requested and stop.reason == ""
    signalled = Stop(StopConfig(), embedded=True)
    signalled.request("SIGINT")
    signalled.resume(budget, rewound=True)
    assert signalled.requested  # a signal stays a stop


class Shards:
    """The guard's side of a fleet: the calls it makes."""

    def __init__(self, norm: float = 1.0, good: bool = True) -> None:
        self.norm, self.good, self.calls = norm, good, []  # type: ignore[var-annotated]

    def norm_sq(self) -> float:
        return self.norm**2

    def has_good(self) -> bool:
        return self.good

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, *args))


def _totals(updates: int, loss: float, examples: int) -> Totals:
    t = Totals(updates=updates)
    t.stats.loss_positive, t.stats.positive = loss * examples, examples
    return t


@pytest.mark.parametrize("guard", ["rollback", "lower-lr", "clip", "none"])
def test_the_guard_carries_out_the_policys_verdict_on_the_shards(guard: str) -> None:
    cfg = DivergenceConfig(guard=guard, warmup_updates=1, good_every=10, lr_factor=0.5, clip_norm=2.0)
    shards = Shards()
    g = ShardGuard(cfg, shards, Metrics())  # type: ignore[arg-type]
    assert g.look(_totals(0, 0.0, 0)) == 1.0 and shards.calls == []  # nothing new: wait
    g.look(_totals(5, 1.0, 50))
    g.look(_totals(10, 1.0, 100))
    healthy = [c for c in shards.calls if c[0] != "set_clip"]
    assert healthy == ([("mark_good",)] if guard == "rollback" else [])
    shards.calls.clear()
    shards.norm = math.inf  # weights no longer finite: act
    g.look(_totals(20, 1.0, 150))
    acted = {"rollback": [("rollback",)], "lower-lr": [("scale_lr", 0.5)], "clip": [("set_clip", 2.0)],
             "none": []}[guard]
    assert shards.calls == acted
    assert g.policy.rollbacks == (1 if guard == "rollback" else 0)


def test_a_rollback_waits_for_every_shard_to_hold_a_good_state() -> None:
    shards = Shards(norm=math.inf, good=False)  # a restarted shard: no good state until the next mark
    g = ShardGuard(DivergenceConfig(guard="rollback"), shards, Metrics())  # type: ignore[arg-type]
    g.look(_totals(5, 1.0, 10))
    assert ("rollback",) not in shards.calls and g.policy.rollbacks == 0


def test_one_policy_serves_one_process_and_a_job() -> None:
    """The single-process guard and the job's act on the same verdicts: a loss spike after warm-up."""
    policy = GuardPolicy(DivergenceConfig(guard="lower-lr", warmup_updates=5))
    verdicts = [policy.observe(0.5, 1.0, updates=1) for _ in range(10)]
    assert all(v.act is None for v in verdicts)
    spike = policy.observe(50.0, 1.0, updates=1)
    assert spike.fired == ["loss_spike"] and spike.act == "lower-lr" and policy.diverging
    skipped = policy.observe(math.nan, None)  # a skipped batch changed nothing: counted, not acted on
    assert skipped.fired == ["non_finite"] and skipped.act is None


def test_the_summary_reports_every_field_from_totals_and_ending() -> None:
    t = Totals()
    r = StepResult(0, records=10, counts=Counter({("p", "consumed"): 6, ("f", "consumed"): 3, ("f", "invalid"): 1}),
                   join=Counter({"duplicate": 2, "expired": 1, "evicted": 1, "joined": 1, "feedback": 2}),
                   dead=Counter({"not_json": 1}), waiting=1, staleness=[0, 0, 0], dropped=1,
                   dropped_examples=4, pushes=2, push_seconds=0.2, push_wait_seconds=0.1, push_held_seconds=0.05,
                   batch_seconds=[0.4], step_seconds=1.0)
    r.stats.positive, r.stats.positive_correct, r.stats.negative, r.stats.negative_avoided = 4, 3, 2, 2
    t.add(r)
    end = Ending(lineage=Counter({(0, "positive"): 3, (1, "negative"): 2}),
                 positions=positions([{"positions": {("p", 1): 7, ("p", 0): 5}}]),
                 divergence_events=Counter(), rollbacks=0, workers=1, recoveries=1, replayed=3,
                 restored_from=None, checkpoints=2, stop_reason="end_of_stream", seconds=2.0)
    s = summarize(JobConfig(), t, end)
    assert s["events_consumed"] == 9 and s["invalid"] == 1 and (s["duplicates"], s["expired"]) == (2, 2)
    assert s["records"] == {"example": 2, "dead_letter": 1, "duplicate": 2, "expired": 1, "evicted": 1,
                            "pending": 1, "rewound": 0}
    assert (s["dead_letters"], s["join_hit_rate"], s["warnings"]) == ({"not_json": 1}, 0.5, [])
    assert (s["progressive_accuracy"], s["negative_avoidance"]) == (0.75, 1.0)
    assert (s["model_examples_positive"], s["model_examples_negative"]) == (3, 2)
    assert s["model_examples_by_partition"] == {"0": 3, "1": 2}
    assert list(s["offsets"].items()) == [("p:0", 5), ("p:1", 7)]
    assert (s["updates"], s["stale_dropped"], s["stale_dropped_examples"], s["pushes"]) == (2, 1, 4, 2)
    assert s["grads_per_push_mean"] == 1.5 and s["events_per_second"] == 4.5 and s["diverged"] is False
    assert (s["push_fraction"], s["push_to_compute"], s["push_wait_fraction"], s["call_overhead_fraction"]) == \
        (0.2, 0.5, 0.1, 0.15)
    assert (s["recoveries"], s["records_replayed"], s["checkpoints"]) == (1, 3, 2)
