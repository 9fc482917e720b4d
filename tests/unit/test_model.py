"""Models: shapes, hashing, sparse gradients, and the learner's predict-before-learn metrics."""

import numpy as np
import pytest
import torch

from streamlearn.events import Example
from streamlearn.learner import Learner, OptimConfig
from streamlearn.model import ModelConfig, bucket, build_model
from streamlearn.objective import Objective


@pytest.mark.parametrize("kind", ["linear", "mlp", "hashed"])
def test_logits_shape(kind: str) -> None:
    m = build_model(ModelConfig(kind, n_features=5, n_classes=4, buckets=64))
    feats = [np.arange(5, dtype=np.float32), {"0": 1.0, "3": 2.0}]
    assert m(*m.inputs(feats)).shape == (2, 4)


def test_hashed_is_stable_and_sparse() -> None:
    assert bucket("colour=red", 1 << 18) == bucket("colour=red", 1 << 18)  # not salted per process
    m = build_model(ModelConfig("hashed", n_classes=3, buckets=1024))
    logits = m(*m.inputs([{"a": 1.0, "b": 2.0}]))
    logits.sum().backward()
    g = m.table.weight.grad
    assert g is not None and g.is_sparse
    rows = set(g.coalesce().indices()[0].tolist())
    assert rows == {bucket("a", 1024), bucket("b", 1024)}


def test_bad_config_names_the_key() -> None:
    with pytest.raises(ValueError, match="n_classes"):
        ModelConfig(n_classes=1)
    with pytest.raises(ValueError, match="model"):
        ModelConfig(kind="tree")
    with pytest.raises(ValueError, match="optimizer"):
        OptimConfig(name="adam")


def _examples(n: int) -> list[Example]:
    rng = np.random.default_rng(0)
    return [Example(str(i), rng.normal(size=4).astype(np.float32), int(rng.integers(3)), bool(i % 2))
            for i in range(n)]


@pytest.mark.parametrize("kind", ["linear", "mlp", "hashed"])
@pytest.mark.parametrize("opt", ["sgd", "adagrad"])
def test_learning_reduces_loss_on_a_fixed_batch(kind: str, opt: str) -> None:
    learner = Learner(ModelConfig(kind, n_features=4, n_classes=3, buckets=256), Objective(),
                      OptimConfig(opt, lr=0.1, batch_size=16))
    batch = _examples(16)
    first = learner.learn(batch).mean_loss
    for _ in range(30):
        last = learner.learn(batch).mean_loss
    assert last < first


def test_predict_before_learn_metrics() -> None:
    learner = Learner(ModelConfig(n_features=4, n_classes=3), Objective(), OptimConfig())
    with torch.no_grad():
        learner.model.linear.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))  # always predicts class 0
    x = np.zeros(4, np.float32)
    batch = [Example("a", x, 0, True), Example("b", x, 1, True), Example("c", x, 0, False),
             Example("d", x, 2, False, probs=np.array([1 / 3, 1 / 3, 1 / 3]))]
    grads, s = learner.gradients(learner.batch(batch))
    assert grads is not None
    assert (s.positive, s.negative, s.positive_correct, s.negative_avoided) == (2, 2, 1, 1)
    assert s.kl_count == 1 and s.kl_sum > 0


def test_non_finite_batch_is_not_applied() -> None:
    learner = Learner(ModelConfig(n_features=2, n_classes=2), Objective(), OptimConfig())
    bad = [Example("a", np.array([np.inf, 0], np.float32), 0, True)]
    grads, stats = learner.gradients(learner.batch(bad))
    assert grads is None and stats.skipped == 1
