"""The mixed objective against autograd on a naive float64 formula and finite differences."""

import math

import pytest
import torch

from streamlearn.objective import Objective, mixed_loss, negated_loss


def naive(logits: torch.Tensor, labels: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=1)
    pl = p.gather(1, labels[:, None]).squeeze(1)
    return torch.where(positive, -torch.log(pl), -torch.log(1 - pl))


def _batch(b: int, k: int, scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, k, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    labels = torch.randint(0, k, (b,), generator=g)
    positive = torch.rand(b, generator=g) < 0.5
    return logits, labels, positive


@pytest.mark.parametrize("k", [2, 3, 10, 57])
def test_matches_naive_formula_and_its_gradient(k: int) -> None:
    logits, labels, positive = _batch(16, k, 2.0)
    ours = mixed_loss(logits, labels, positive)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    ref = naive(logits, labels, positive)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-9)


def test_gradient_matches_finite_differences() -> None:
    logits, labels, positive = _batch(4, 5, 1.5, seed=3)
    assert torch.autograd.gradcheck(lambda z: mixed_loss(z, labels, positive), (logits,), eps=1e-6, atol=1e-6)


def test_closed_form_gradient() -> None:
    """d/df of -log(1 - p_l) is p - softmax(f with f_l masked)."""
    logits, labels, _ = _batch(8, 6, 3.0, seed=5)
    negative = torch.zeros(8, dtype=torch.bool)
    (g,) = torch.autograd.grad(mixed_loss(logits, labels, negative).sum(), logits)
    p = torch.softmax(logits, 1)
    q = torch.softmax(logits.detach().scatter(1, labels[:, None], float("-inf")), 1)
    torch.testing.assert_close(g, p - q)


@pytest.mark.parametrize("k", [2, 10, 1000, 100_000])
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_finite_for_extreme_logits(k: int, scale: float) -> None:
    b = 4
    logits = torch.zeros(b, k, dtype=torch.float32)
    labels = torch.tensor([0, 1, k - 1, 0])
    logits[torch.arange(b), labels] = scale  # the judged class dominates (or vanishes)
    logits[0, 1 % k] = -scale
    logits = logits.requires_grad_(True)
    positive = torch.tensor([True, False, False, True])
    loss = mixed_loss(logits, labels, positive)
    (g,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    # "not l" when l has all the mass: the loss is large, not inf, and pushes l down
    if scale > 0:
        assert loss[1] > 1e3
        assert g[1, 1] > 0


def test_negative_gradient_vanishes_when_label_is_already_avoided() -> None:
    logits = torch.tensor([[10.0, 0.0, -30.0]], requires_grad=True)
    loss = mixed_loss(logits, torch.tensor([2]), torch.tensor([False]))
    (g,) = torch.autograd.grad(loss.sum(), logits)
    assert float(loss) < 1e-12 and float(g.abs().max()) < 1e-12


def test_rejects_single_class() -> None:
    with pytest.raises(ValueError, match="K >= 2"):
        mixed_loss(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.bool))


def test_negated_is_unbounded_below() -> None:
    labels, neg = torch.tensor([0]), torch.tensor([False])
    values = [float(negated_loss(torch.tensor([[-s, 0.0]]), labels, neg)) for s in (1.0, 10.0, 100.0)]
    assert values[0] > values[1] > values[2] and values[2] < -99
    mixed = [float(mixed_loss(torch.tensor([[-s, 0.0]]), labels, neg)) for s in (1.0, 10.0, 100.0)]
    assert all(v >= 0 for v in mixed)


def test_default_negative_weight_and_batch_loss() -> None:
    obj = Objective(negative_weight=1 / 9)
    assert Objective().neg_weight == 1.0
    assert Objective("positive-only").neg_weight == 0.0
    assert Objective(negative_weight=0.3).neg_weight == 0.3
    logits = torch.zeros(2, 10)
    labels = torch.tensor([3, 4])
    positive = torch.tensor([True, False])
    loss, per = obj.batch_loss(logits, labels, positive, torch.tensor([2.0, 1.0]))
    expected = (2.0 * math.log(10) + (1 / 9) * -math.log(0.9)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert per.tolist() == pytest.approx([math.log(10), -math.log(0.9)], rel=1e-6)


def test_objective_validation() -> None:
    with pytest.raises(ValueError, match="objective"):
        Objective("nope")
    with pytest.raises(ValueError, match="negative_weight"):
        Objective(negative_weight=-1)


@pytest.mark.parametrize("name", ["mixed", "positive-only", "negated"])
@pytest.mark.parametrize(("k", "scale"), [(2, 1.0), (10, 3.0), (57, 10.0), (1000, 1e4)])
def test_numpy_closed_form_matches_autograd(name: str, k: int, scale: float) -> None:
    logits, labels, positive = _batch(32, k, scale, seed=k)
    obj = Objective(name)
    per, grad = obj.closed_form(logits.detach().numpy(), labels.numpy(), positive.numpy())
    ref = obj.per_example(logits, labels, positive)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    assert per.shape == (32,) and grad.shape == (32, k)
    torch.testing.assert_close(torch.from_numpy(per), ref.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.from_numpy(grad), g_ref, rtol=1e-9, atol=1e-9)


def test_numpy_closed_form_weights_and_single_class() -> None:
    import numpy as np

    obj = Objective("mixed", negative_weight=0.25)
    w = obj.weights(np.array([True, False]), np.array([2.0, 2.0], dtype=np.float32))
    assert w.tolist() == [2.0, 0.5]
    assert Objective("positive-only").weights(np.array([False]), np.ones(1, np.float32)).tolist() == [0.0]
    with pytest.raises(ValueError, match="K >= 2"):
        obj.closed_form(np.zeros((3, 1)), np.zeros(3, dtype=np.int64), np.ones(3, dtype=bool))
