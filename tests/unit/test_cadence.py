"""Push cadence: a push carries more micro-batches while pushes cost more than their budget of a step."""

import time

import numpy as np
import pytest

from streamlearn.cadence import PushCadence
from streamlearn.config import JobConfig
from streamlearn.job import build_worker
from streamlearn.ps.client import Done, LocalParamClient
from streamlearn.ps.config import PSConfig
from streamlearn.ps.shard import Shard
from streamlearn.simulate import SimConfig


def _share(push: float, group: int, per_batch: float) -> float:
    return push / (push + group * per_batch)


@pytest.mark.parametrize("push_ms", [0.5, 1.0, 3.0])
def test_the_group_grows_until_pushes_fit_the_budget(push_ms: float) -> None:
    cadence = PushCadence(least=8, most=1024, budget=0.04, warmup=0)
    for _ in range(3):  # steady steps: 4 pushes, 0.23 ms of other work per micro-batch
        cadence.observe(push_seconds=4 * push_ms / 1e3, pushes=4, other_seconds=256 * 0.23e-3, batches=256)
    assert _share(push_ms, cadence.group, 0.23) <= 0.04
    assert _share(push_ms, cadence.group - 1, 0.23) > 0.04  # and no larger than it takes


def test_the_group_stays_within_its_bounds() -> None:
    cheap = PushCadence(least=64, most=256, budget=0.04, warmup=0)
    cheap.observe(push_seconds=1e-5, pushes=1, other_seconds=0.05, batches=64)
    assert cheap.group == 64  # never fewer than grads_per_push, however cheap a push
    dear = PushCadence(least=64, most=256, budget=0.04, warmup=0)
    dear.observe(push_seconds=0.05, pushes=1, other_seconds=0.01, batches=64)
    assert dear.group == 256
    off = PushCadence(least=64, most=256, budget=0.0, warmup=0)
    off.observe(push_seconds=0.05, pushes=1, other_seconds=0.01, batches=64)
    assert off.group == 64  # budget 0: a fixed grads_per_push
    with pytest.raises(ValueError, match="least <= most"):
        PushCadence(least=8, most=4, budget=0.04, warmup=0)


def test_one_slow_push_moves_the_group_only_partly() -> None:
    cadence = PushCadence(least=8, most=4096, budget=0.04, warmup=0)
    for _ in range(10):
        cadence.observe(push_seconds=0.5e-3, pushes=1, other_seconds=64 * 0.2e-3, batches=64)
    steady = cadence.group
    cadence.observe(push_seconds=20e-3, pushes=1, other_seconds=64 * 0.2e-3, batches=64)  # one outlier
    assert steady < cadence.group < 20 / 0.5 * steady / 2
    for _ in range(30):
        cadence.observe(push_seconds=0.5e-3, pushes=1, other_seconds=64 * 0.2e-3, batches=64)
    assert cadence.group == pytest.approx(steady, abs=1)  # and it comes back


def test_a_short_step_after_a_wait_weighs_by_its_micro_batches() -> None:
    """A poll that returns a few records after waiting for the broker makes a step of one micro-batch and
    ~12 ms of other time: as a step it would say a micro-batch costs 12 ms and collapse the group."""
    cadence = PushCadence(least=8, most=1024, budget=0.04, warmup=0)
    for _ in range(5):
        cadence.observe(push_seconds=3e-3, pushes=3, other_seconds=500 * 0.16e-3, batches=500)
    steady = cadence.group
    cadence.observe(push_seconds=0.7e-3, pushes=1, other_seconds=12.5e-3, batches=1)
    assert cadence.group >= 0.8 * steady


def test_the_group_stays_at_least_while_the_model_is_young() -> None:
    cadence = PushCadence(least=8, most=256, budget=0.04, warmup=10)
    for _ in range(4):  # 8 pushes: dear ones, but too few yet
        cadence.observe(push_seconds=2 * 5e-3, pushes=2, other_seconds=0.01, batches=64)
    assert cadence.group == 8
    cadence.observe(push_seconds=2 * 5e-3, pushes=2, other_seconds=0.01, batches=64)
    assert cadence.group == 256


def test_steps_without_a_push_leave_the_group_alone() -> None:
    cadence = PushCadence(least=8, most=256, budget=0.04, warmup=0)
    cadence.observe(push_seconds=0.0, pushes=0, other_seconds=0.01, batches=0)
    assert cadence.group == 8 and cadence.push_seconds is None


def test_bounded_mode_caps_the_group_below_its_staleness_bound() -> None:
    assert PSConfig(mode="async").most_grads_per_push == 1024
    assert PSConfig(mode="bounded").most_grads_per_push == 512  # a quarter of the default bound, 2048
    assert PSConfig(mode="bounded", max_staleness=256).most_grads_per_push == 64
    assert PSConfig(mode="bounded", max_staleness=1024).most_grads_per_push == 256
    assert PSConfig(mode="bounded", max_staleness=8192).most_grads_per_push == 1024  # the cap still holds
    assert PSConfig(grads_per_push=1024).most_grads_per_push == 1024  # never below grads_per_push
    with pytest.raises(ValueError, match="push_budget"):
        PSConfig(push_budget=1.5)
    with pytest.raises(ValueError, match="max_grads_per_push"):
        PSConfig(max_grads_per_push=0)


class SlowClient(LocalParamClient):
    """In-process servers whose pushes take ``delay`` seconds, as a Ray call on busy cores does."""

    def __init__(self, shards: list[Shard], delay: float) -> None:
        super().__init__(shards)
        self.delay = delay
        self.pushes = 0

    def submit_update(self, worker: int, update: np.ndarray, count: int, version: int,
                      pull: bool = False) -> Done:
        time.sleep(self.delay)
        self.pushes += 1
        return super().submit_update(worker, update, count, version, pull)


@pytest.mark.parametrize("budget", [0.0, 0.04])
def test_a_worker_with_slow_pushes_pushes_less_often_and_credits_every_example(budget: float) -> None:
    cfg = JobConfig(workers=1, partitions=1, max_records=400, sim=SimConfig(events=8000),
                    ps=PSConfig(mode="async", grads_per_push=2, push_budget=budget, max_grads_per_push=64))
    client = SlowClient([Shard(0, cfg.ps, cfg.model, cfg.optim)], delay=0.01)
    worker = build_worker(cfg, 0, [0], client)
    trained = 0
    for _ in range(20):
        r = worker.step()
        trained += r.stats.examples
    worker.flush()
    assert sum(worker.applied.values()) == trained  # every trained example is credited, whatever the group
    assert client.shards[0].version * cfg.optim.batch_size == trained
    if budget:
        assert worker.cadence.group > 2 and client.pushes < trained / cfg.optim.batch_size / 4
    else:
        assert worker.cadence.group == 2 and client.pushes >= trained / cfg.optim.batch_size / 3


@pytest.mark.parametrize(("n", "group", "sizes"), [(125, 84, [125]), (125, 64, [63, 62]), (250, 64, [63, 63, 63, 61]),
                                                  (600, 300, [200, 200, 200]), (3, 64, [3]), (0, 64, [])])
def test_a_step_cuts_its_micro_batches_into_even_pushes(n: int, group: int, sizes: list[int]) -> None:
    cfg = JobConfig(workers=1, partitions=1, ps=PSConfig(mode="async", grads_per_push=8, max_grads_per_push=256))
    worker = build_worker(cfg, 0, [0], LocalParamClient([Shard(0, cfg.ps, cfg.model, cfg.optim)]))
    worker.cadence.group = group
    batches = [[] for _ in range(n)]  # type: ignore[var-annotated]
    assert [len(g) for g in worker._groups(batches)] == sizes
