"""The dense linear model's compiled micro-batch loop against the numpy path it replaces, and against autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamlearn.events import Example
from streamlearn.learner import Learner, OptimConfig
from streamlearn.model import ModelConfig
from streamlearn.objective import Objective

D, K = 12, 5


def _examples(n: int, seed: int = 0, scale: float = 2.0) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        probs = rng.dirichlet(np.ones(K)).astype(np.float32) if i % 3 else None
        out.append(Example(f"e{i}", (rng.normal(size=D) * scale).astype(np.float32), int(rng.integers(K)),
                           bool(rng.random() < 0.4), weight=float(rng.uniform(0.5, 2.0)), probs=probs))
    return out


def _learners(optim: str, objective: str, lr: float = 0.3) -> tuple[Learner, Learner]:
    make = lambda: Learner(ModelConfig(n_features=D, n_classes=K), Objective(objective),  # noqa: E731
                           OptimConfig(name=optim, lr=lr))
    compiled, reference = make(), make()
    assert compiled.compiled
    reference.compiled = False  # the per-batch numpy path: Learner.gradients, then Learner.apply
    return compiled, reference


def _same_stats(a, b) -> None:
    for name in ("positive", "negative", "positive_correct", "negative_avoided", "kl_count", "skipped"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("loss_positive", "loss_negative", "kl_sum", "grad_norm"):  # float64 sums vs float32 ones
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-4, abs=1e-5), name


@pytest.mark.parametrize("optim", ["sgd", "adagrad"])
@pytest.mark.parametrize("objective", ["mixed", "negated", "positive-only"])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_each_step_matches_the_numpy_path(optim: str, objective: str, clip: float | None) -> None:
    compiled, reference = _learners(optim, objective)
    data = _examples(200)
    batches = [data[i : i + 4] for i in range(0, len(data), 4)]
    for b in batches:  # one step at a time from the same state: the arithmetic, not drift, is compared
        reference.state.load_state_dict(compiled.state.state_dict())  # copied in: not shared
        reference.scored = compiled.scored
        (ok_a,), a = compiled.learn_batches([b], clip)
        (ok_b,), b_stats = reference.learn_batches([b], clip)
        assert ok_a == ok_b
        _same_stats(a, b_stats)
        for p, q in zip(compiled.params, reference.params, strict=True):
            np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)
    assert compiled.state.steps == len(batches)
    if optim == "adagrad":  # the optimizer's own state moves too: checkpoints hold it
        np.testing.assert_allclose(compiled.state.sums[0], reference.state.sums[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optim", ["sgd", "adagrad"])
def test_a_run_of_batches_in_one_call_is_the_same_as_one_call_each(optim: str) -> None:
    whole, single = _learners(optim, "mixed")
    single.compiled = True
    data = _examples(240, seed=1)
    batches = [data[i : i + 4] for i in range(0, len(data), 4)]
    applied, stats = whole.learn_batches(batches, loss_sample=10)
    total = [single.learn_batches([b]) for b in batches]
    assert applied == [ok for (ok,), _ in total]
    assert stats.examples == 240 and len(stats.losses) == 10
    assert stats.kl_count == sum(s.kl_count for _, s in total) > 0  # every KL_EVERY-th batch samples the KL
    for p, q in zip(whole.params, single.params, strict=True):
        np.testing.assert_array_equal(p, q)  # the worker's groups and the trainer's batches: bit for bit


def test_the_step_is_the_autograd_gradient() -> None:
    """With SGD at lr 1 and no clip, a step moves the weights by minus the gradient of the mixed loss."""
    compiled, _ = _learners("sgd", "mixed", lr=1.0)
    rng = np.random.default_rng(0)
    for p in compiled.params:
        p[...] = rng.normal(0.0, 0.5, size=p.shape)
    batch = _examples(8, seed=2)
    before = [torch.from_numpy(p.copy()) for p in compiled.params]
    model = torch.nn.Linear(D, K)
    with torch.no_grad():
        model.weight.copy_(before[0])
        model.bias.copy_(before[1])
    x = torch.from_numpy(np.stack([e.features for e in batch]))  # type: ignore[arg-type]
    labels = torch.tensor([e.label for e in batch])
    positive = torch.tensor([e.positive for e in batch])
    weights = torch.tensor([e.weight for e in batch], dtype=torch.float32)
    loss, _ = Objective().batch_loss(model(x), labels, positive, weights)
    loss.backward()
    compiled.learn_batches([batch])
    assert model.weight.grad is not None and model.bias.grad is not None
    torch.testing.assert_close(before[0] - torch.from_numpy(compiled.params[0]), model.weight.grad, rtol=1e-4,
                               atol=1e-6)
    torch.testing.assert_close(before[1] - torch.from_numpy(compiled.params[1]), model.bias.grad, rtol=1e-4,
                               atol=1e-6)


def test_extreme_logits_stay_finite() -> None:
    compiled, _ = _learners("adagrad", "mixed")
    huge = _examples(4, seed=3, scale=2e3)  # logits of order 1e4 after a step or two
    for _ in range(3):
        (ok,), stats = compiled.learn_batches([huge])
        assert ok and np.isfinite(stats.loss_positive + stats.loss_negative)
    assert all(np.isfinite(p).all() for p in compiled.params)


def test_bad_batches_are_not_applied_as_on_the_numpy_path() -> None:
    """A gradient whose norm is past MAX_GRAD_NORM (its squares would overflow Adagrad's float32 sums) and a
    NaN loss are refused; the batches around them still learn."""
    overflow = [Example("big", np.full(D, 1e19, np.float32), 1, True), *_examples(3, seed=4)]
    nan = [Example("nan", np.full(D, np.nan, np.float32), 1, False), *_examples(3, seed=5)]
    good = _examples(4, seed=6)
    compiled, reference = _learners("adagrad", "mixed")
    applied, stats = compiled.learn_batches([overflow, nan, good])
    assert applied == [False, False, True] and stats.skipped == 2
    assert reference.learn_batches([overflow, nan, good])[0] == applied
    for p, q in zip(compiled.params, reference.params, strict=True):  # only the good batch moved them
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)
        assert np.isfinite(p).all()
