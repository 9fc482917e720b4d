"""Models: shapes, hashing, sparse gradients, and the learner's predict-before-learn metrics."""

import numpy as np
import pytest
import torch

from streamlearn.events import Example
from streamlearn.learner import Learner, OptimConfig
from streamlearn.model import ModelConfig, bucket, build_model
from streamlearn.objective import Objective
from streamlearn.ps.state import Rows


@pytest.mark.parametrize("kind", ["linear", "mlp", "hashed"])
def test_logits_shape(kind: str) -> None:
    m = build_model(ModelConfig(kind, n_features=5, n_classes=4, buckets=64))
    feats = [np.arange(5, dtype=np.float32), {"0": 1.0, "3": 2.0}]
    assert m.logits(*m.inputs(feats)).shape == (2, 4)


def test_hashed_is_stable_and_sparse() -> None:
    assert bucket("colour=red", 1 << 18) == bucket("colour=red", 1 << 18)  # not salted per process
    m = build_model(ModelConfig("hashed", n_classes=3, buckets=1024))
    inputs = m.inputs([{"a": 1.0, "b": 2.0}])
    _, g = m.param_grads(inputs, np.ones_like(m.logits(*inputs)))
    assert isinstance(g, Rows)
    assert set(g.rows.tolist()) == {bucket("a", 1024), bucket("b", 1024)}


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
    learner.params[1][:] = [5.0, 0.0, 0.0]  # always predicts class 0
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


def _torch_logits(learner: Learner, inputs: tuple[np.ndarray, ...], params: list[torch.Tensor]) -> torch.Tensor:
    """The model's logits written in torch, on ``params`` (leaves that collect the gradient)."""
    if learner.model_cfg.kind == "linear":
        (x,) = inputs
        return torch.from_numpy(x) @ params[0].T + params[1]
    idx, offsets, vals = (torch.from_numpy(a) for a in inputs)
    bias, table = params
    bags = torch.repeat_interleave(torch.arange(len(offsets)), torch.diff(offsets, append=torch.tensor([len(idx)])))
    out = torch.zeros(len(offsets), table.shape[1]).index_add(0, bags, table[idx] * vals[:, None])
    return out + bias


@pytest.mark.parametrize("kind", ["linear", "hashed"])
@pytest.mark.parametrize("neg_weight", [1.0, 0.3])
def test_closed_form_equals_autograd(kind: str, neg_weight: float) -> None:
    """The numpy gradient and loss equal autograd's on the same weights (hashed: sparse, summed rows)."""
    rng = np.random.default_rng(4)
    model_cfg = ModelConfig(kind, n_features=6, n_classes=5, buckets=16)  # 16 buckets: repeated rows in a batch
    objective = Objective(negative_weight=neg_weight)
    fast = Learner(model_cfg, objective, OptimConfig())
    for p in fast.params:
        p[...] = rng.normal(size=p.shape)
    batch = [Example(str(i), rng.normal(size=6).astype(np.float32), int(rng.integers(5)), bool(i % 3 == 0),
                     weight=float(1 + i % 2), probs=rng.dirichlet(np.ones(5)) if i % 4 == 0 else None)
             for i in range(12)]
    batch[5] = Example("no-features", {}, 1, True)  # an empty bag for the hashed model
    b = fast.batch(batch)
    g_fast, s_fast = fast.gradients(b)
    assert g_fast is not None
    leaves = [torch.from_numpy(p.copy()).requires_grad_(True) for p in fast.params]
    loss, per = objective.batch_loss(_torch_logits(fast, b.inputs, leaves), torch.from_numpy(b.labels),
                                     torch.from_numpy(b.positive), torch.from_numpy(b.weights))
    loss.backward()
    for g, leaf in zip(g_fast, leaves, strict=True):
        assert isinstance(g, Rows) == (kind == "hashed" and leaf.dim() == 2)
        dense = np.zeros(leaf.shape, np.float32)
        if isinstance(g, Rows):
            dense[g.rows] = g.values
        else:
            dense[...] = g
        assert leaf.grad is not None
        np.testing.assert_allclose(dense, leaf.grad.numpy(), rtol=1e-5, atol=1e-6)
    assert s_fast.mean_loss == pytest.approx(float(per.mean()), rel=1e-5)
    assert s_fast.kl_count == 3


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_the_one_optimizer_step_matches_torch(name: str, sparse: bool) -> None:
    """ModelState.step (numpy, in place) equals torch's SGD / Adagrad step, state included (dense and rows)."""
    from streamlearn.model import sum_rows
    from streamlearn.ps.state import ModelState

    rng = np.random.default_rng(0)
    ours = [rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    ref = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in ours]
    state = ModelState(ours, name, lr=0.3)
    opt = torch.optim.SGD(ref, lr=0.3) if name == "sgd" else torch.optim.Adagrad(ref, lr=0.3)
    for i in range(50):
        grads = [rng.normal(size=p.shape).astype(np.float32) * np.float32(10.0 ** (i % 4 - 2)) for p in ours]
        dense = [torch.from_numpy(g.copy()) for g in grads]
        step: list[np.ndarray | Rows] = list(grads)
        if sparse:  # repeated rows: summed before the update, as coalescing does
            rows = rng.integers(0, 5, size=9)
            values = rng.normal(size=(9, 7)).astype(np.float32)
            step[0] = Rows(*sum_rows(rows, values))
            dense[0] = torch.sparse_coo_tensor(torch.from_numpy(rows)[None, :], torch.from_numpy(values), (5, 7),
                                               check_invariants=False)
        scale = 0.5 if i % 3 == 0 else 1.0
        state.step(step, scale)
        for p, g in zip(ref, dense, strict=True):
            p.grad = g * scale
        opt.step()
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert state.steps == 50
    if name == "adagrad":
        for a, b in zip(state.sums, ref, strict=True):
            np.testing.assert_allclose(a, opt.state[b]["sum"].numpy(), rtol=1e-5, atol=1e-6)


def test_hashed_inputs_of_named_features_match_the_per_feature_path(monkeypatch: pytest.MonkeyPatch) -> None:
    m = build_model(ModelConfig("hashed", n_classes=3, buckets=1 << 12))
    feats = [{"a": 1.0, "b": 2.5}, {}, {"c": -1.0, "a": 0.5, "zz": 3}, {"b": 1.0}]

    def same(got: tuple[np.ndarray, ...]) -> None:
        ref = m._mixed_inputs(feats)  # one feature at a time, the path dense vectors take
        for g, r in zip(got, ref, strict=True):
            assert g.dtype == r.dtype
            np.testing.assert_array_equal(g, r)

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
