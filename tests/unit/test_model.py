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
    with pytest.raises(ValueError, match=r"optim\.name"):
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


def test_kl_is_sampled_every_kl_every_micro_batches() -> None:
    """KL(serving || current) is a smoothed gauge: one micro-batch in KL_EVERY feeds it, starting with the first."""
    from streamlearn.learner import KL_EVERY, BatchStats

    learner = Learner(ModelConfig(n_features=4, n_classes=3), Objective(), OptimConfig())
    probs = np.array([0.2, 0.3, 0.5])
    batch = learner.batch([Example(str(i), np.ones(4, np.float32), i % 3, True, probs=probs) for i in range(4)])
    total = BatchStats()
    for _ in range(2 * KL_EVERY + 1):
        total.add(learner.gradients(batch)[1])
    assert total.kl_count == 3 * 4 and total.kl_sum > 0
    assert total.examples == (2 * KL_EVERY + 1) * 4


def test_non_finite_batch_is_not_applied() -> None:
    learner = Learner(ModelConfig(n_features=2, n_classes=2), Objective(), OptimConfig())
    bad = [Example("a", np.array([np.inf, 0], np.float32), 0, True)]
    grads, stats = learner.gradients(learner.batch(bad))
    assert grads is None and stats.skipped == 1


@pytest.mark.parametrize("kind", ["linear", "hashed"])
@pytest.mark.parametrize("neg_weight", [1.0, 0.3])
def test_closed_form_equals_autograd(kind: str, neg_weight: float) -> None:
    """The numpy gradient and batch stats equal autograd's on the same weights (hashed: sparse, summed rows)."""
    rng = np.random.default_rng(4)
    model_cfg = ModelConfig(kind, n_features=6, n_classes=5, buckets=16)  # 16 buckets: repeated rows in a batch
    fast = Learner(model_cfg, Objective(negative_weight=neg_weight), OptimConfig())
    with torch.no_grad():
        for p in fast.model.parameters():
            p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape)).astype(np.float32)))
    slow = Learner(model_cfg, Objective(negative_weight=neg_weight), OptimConfig())
    slow.model.load_state_dict(fast.model.state_dict())
    slow.model.closed_form = False  # force the autograd path
    batch = [Example(str(i), rng.normal(size=6).astype(np.float32), int(rng.integers(5)), bool(i % 3 == 0),
                     weight=float(1 + i % 2), probs=rng.dirichlet(np.ones(5)) if i % 4 == 0 else None)
             for i in range(12)]
    batch[5] = Example("no-features", {}, 1, True)  # an empty bag for the hashed model
    g_fast, s_fast = fast.gradients(fast.batch(batch))
    g_slow, s_slow = slow.gradients(slow.batch(batch))
    assert g_fast is not None and g_slow is not None
    for a, b in zip(g_fast, g_slow, strict=True):
        assert a.is_sparse == b.is_sparse
        torch.testing.assert_close(a.to_dense(), b.to_dense(), rtol=1e-5, atol=1e-6)
    assert s_fast.grad_norm == pytest.approx(s_slow.grad_norm, rel=1e-5)
    assert (s_fast.positive, s_fast.positive_correct, s_fast.negative_avoided) == (
        s_slow.positive, s_slow.positive_correct, s_slow.negative_avoided)
    assert s_fast.mean_loss == pytest.approx(s_slow.mean_loss, rel=1e-5)
    assert s_fast.kl_count == s_slow.kl_count == 3 and s_fast.kl_sum == pytest.approx(s_slow.kl_sum, rel=1e-5)


def _sparse_grad(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    rows = torch.randint(0, shape[0], (9,), generator=gen)  # repeats: rows are summed before the update
    return torch.sparse_coo_tensor(rows[None, :], torch.randn(9, *shape[1:], generator=gen), shape)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_numpy_step_matches_torch_optimizer(name: str, sparse: bool) -> None:
    """learner.step's in-place numpy update equals optimizer.step(), state included (dense and sparse rows)."""
    from streamlearn.learner import build_optimizer, step

    gen = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 7, generator=gen)), torch.nn.Parameter(torch.randn(5, generator=gen))]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    cfg = OptimConfig(name, lr=0.3)
    opt_ours, opt_ref = build_optimizer(cfg, ours), build_optimizer(cfg, ref)
    for i in range(50):
        grads = [torch.randn(p.shape, generator=gen) * 10.0 ** (i % 4 - 2) for p in ours]
        if sparse:
            grads[0] = _sparse_grad(gen, (5, 7))
        scale = 0.5 if i % 3 == 0 else 1.0
        step(opt_ours, ours, grads, scale)
        for p, g in zip(ref, grads, strict=True):
            p.grad = g * scale
        opt_ref.step()
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
    if name == "adagrad":
        for a, b in zip(ours, ref, strict=True):
            assert float(opt_ours.state[a]["step"]) == float(opt_ref.state[b]["step"]) == 50
            torch.testing.assert_close(opt_ours.state[a]["sum"], opt_ref.state[b]["sum"], rtol=1e-5, atol=1e-6)


def test_hashed_inputs_of_named_features_match_the_per_feature_path(monkeypatch: pytest.MonkeyPatch) -> None:
    m = build_model(ModelConfig("hashed", n_classes=3, buckets=1 << 12))
    feats = [{"a": 1.0, "b": 2.5}, {}, {"c": -1.0, "a": 0.5, "zz": 3}, {"b": 1.0}]

    def same(got: tuple[torch.Tensor, ...]) -> None:
        ref = m._mixed_inputs(feats)  # one feature at a time, the path dense vectors take
        for g, r in zip(got, ref, strict=True):
            assert g.dtype == r.dtype
            np.testing.assert_array_equal(g.numpy(), r.numpy())

    same(m.inputs(feats))  # names not cached yet
    same(m.inputs(feats))  # cached
    assert m.inputs(feats)[1].tolist() == [0, 2, 2, 5]
    monkeypatch.setattr("streamlearn.model.CACHED_NAMES", 0)
    m._cache.clear()
    same(m.inputs(feats))  # a full cache: every name hashed again
    assert not m._cache
    idx, offsets, vals = m.inputs([])
    assert len(idx) == len(offsets) == len(vals) == 0


@pytest.mark.parametrize("kind", ["linear", "mlp", "hashed"])
def test_any_feature_name_the_decoder_accepts_trains(kind: str) -> None:
    """Names that decode are all trainable: '²' is a digit to str.isdigit() but not a position (dense models
    ignore it as any unknown name), and JSON can spell a lone surrogate, which UTF-8 cannot encode (the hashed
    model hashes it anyway)."""
    from streamlearn.codec import decode
    from streamlearn.events import Schema

    raw = '{"id": "p", "ts": 1.0, "prediction": 0, "features": {"\\ud800": 2.0, "²": 1.0, "1": 3.0}}'.encode()
    (pred,) = decode(raw, "prediction", Schema.from_spec(2, 4))
    learner = Learner(ModelConfig(kind=kind, n_features=4, n_classes=2, buckets=64), Objective(), OptimConfig())
    stats = learner.learn([Example("p", pred.features, 1, True)])
    assert stats.skipped == 0 and stats.examples == 1
    if kind != "hashed":
        (x,) = learner.model.inputs([pred.features])
        assert x.tolist() == [[0.0, 3.0, 0.0, 0.0]]
    else:
        assert bucket("\ud800", 64) == bucket("\ud800", 64) and 0 <= bucket("\ud800", 64) < 64
