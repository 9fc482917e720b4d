"""A worker's Exchange alone: a push is credited once settled, and the replica ends on the servers' state."""

import numpy as np

from streamlearn.events import Example
from streamlearn.learner import Learner, OptimConfig
from streamlearn.model import ModelConfig
from streamlearn.objective import Objective
from streamlearn.ps.client import LocalParamClient
from streamlearn.ps.config import PSConfig
from streamlearn.ps.exchange import Exchange
from streamlearn.ps.shard import Shard
from streamlearn.worker import StepResult


def _batches(n: int) -> list[list[Example]]:
    rng = np.random.default_rng(0)
    return [[Example(f"{i}-{j}", rng.normal(size=4).astype(np.float32), int(rng.integers(3)), bool(j % 2),
                     partition=i % 2) for j in range(4)] for i in range(n)]


def test_a_settled_push_credits_its_examples_and_the_replica_matches_the_servers() -> None:
    model, optim = ModelConfig(n_features=4, n_classes=3), OptimConfig()
    shard = Shard(0, PSConfig(), model, optim)
    learner = Learner(model, Objective(), optim)
    ex = Exchange(0, learner, LocalParamClient([shard]), PSConfig())
    out = StepResult(0)
    for group in (_batches(5), _batches(3)):
        ex.before_group(None, out)
        before = ex.replica.state(None)
        applied, _ = learner.learn_batches(group)
        after = ex.replica.state(None)
        ex.push(after - before, [b for b, ok in zip(group, applied, strict=True) if ok], out,
                pull=ex.pull_due(after_push=True), state=after)
    assert ex.inflight is not None  # pipelined: the second push is still in flight
    credited = sum(ex.applied.values())
    ex.flush(out)
    assert ex.inflight is None and out.pushes == 2
    assert sum(ex.applied.values()) == 32 > credited and sum(out.applied.values()) == 32
    assert shard.version == ex.version == 8
    np.testing.assert_array_equal(learner.flat().read(), shard.flat().read())
