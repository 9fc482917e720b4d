"""Softmax models: dense linear, a small MLP, and a hashed-sparse linear model.

Each model turns a list of feature values (dense vectors or name -> value
mappings, see :mod:`streamlearn.events`) into numpy inputs with
:meth:`~SoftmaxModel.inputs`, and inputs into logits (B, K) with
:meth:`~SoftmaxModel.logits`. Parameters are plain float32 arrays
(:attr:`~SoftmaxModel.params`, stepped in place by :class:`~streamlearn.ps.state.ModelState`);
the linear models give their gradient in closed form, the MLP through torch's
autograd (torch is imported only when an MLP is built).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

from streamlearn.config.learning import MODELS as MODELS
from streamlearn.config.learning import ModelConfig as ModelConfig
from streamlearn.events import Features
from streamlearn.ps.state import Grad, Rows


class SoftmaxModel:
    """Base: ``params`` (float32 arrays), an ``inputs`` featurizer and ``logits``."""

    sparse = False  # True when gradients touch only some rows (hashed)
    closed_form = True  # False when the gradient comes from autograd (:meth:`autograd`)
    params: list[np.ndarray]

    def __init__(self, cfg: ModelConfig) -> None:
        raise NotImplementedError

    def inputs(self, features: Sequence[Features]) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def logits(self, *inputs: np.ndarray) -> np.ndarray:
        """(B, K) logits from the inputs."""
        raise NotImplementedError

    def param_grads(self, inputs: tuple[np.ndarray, ...], dlogits: np.ndarray) -> list[Grad]:
        """d(loss)/d(params) from d(loss)/d(logits) (B, K), in ``params`` order."""
        raise NotImplementedError

    def autograd(self, inputs: tuple[np.ndarray, ...], loss: Any) -> tuple[np.ndarray, np.ndarray, float, list[Grad]]:
        """Models without a closed form: (logits (B, K), per-example loss (B,), the loss, d(loss)/d(params))
        through autograd, ``loss(logits) -> (scalar, per-example)`` on torch tensors."""
        raise NotImplementedError

    def row_params(self) -> frozenset[int]:
        """Indices (in ``params`` order) of the parameters whose gradients touch only some rows."""
        return frozenset()

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(p.shape for p in self.params)


def _dense(features: Sequence[Features], width: int) -> np.ndarray:
    out = np.zeros((len(features), width), dtype=np.float32)  # (B, D)
    for i, f in enumerate(features):
        if isinstance(f, np.ndarray):
            out[i] = f
        else:
            for name, v in f.items():
                j = int(name) if name.isascii() and name.isdigit() else -1  # not '²'
                if 0 <= j < width:
                    out[i, j] = v
    return out


class LinearSoftmax(SoftmaxModel):
    """logits = x W^T + b: weight (K, D), bias (K,), both starting at zero."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.width = cfg.n_features
        self.weight = np.zeros((cfg.n_classes, cfg.n_features), dtype=np.float32)  # (K, D)
        self.bias = np.zeros(cfg.n_classes, dtype=np.float32)  # (K,)
        self.params = [self.weight, self.bias]

    def inputs(self, features: Sequence[Features]) -> tuple[np.ndarray, ...]:
        return (_dense(features, self.width),)

    def logits(self, *inputs: np.ndarray) -> np.ndarray:
        (x,) = inputs
        return x @ self.weight.T + self.bias

    def param_grads(self, inputs: tuple[np.ndarray, ...], dlogits: np.ndarray) -> list[Grad]:
        """d(loss)/d(weight, bias) from d(loss)/d(logits) (B, K): one matrix product."""
        (x,) = inputs
        return [dlogits.T @ x, dlogits.sum(axis=0)]


class MLPSoftmax(SoftmaxModel):
    """One hidden ReLU layer, in torch (autograd); ``params`` are numpy views of the torch parameters."""

    closed_form = False

    def __init__(self, cfg: ModelConfig) -> None:
        import torch  # the MLP alone needs it
        from torch import nn

        torch.set_num_threads(1)  # micro-batches are tiny: threads cost more than they give
        torch.manual_seed(cfg.seed)
        self.width = cfg.n_features
        self.net = nn.Sequential(
            nn.Linear(cfg.n_features, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.n_classes)
        )
        self.params = [p.detach().numpy() for p in self.net.parameters()]  # shares memory

    def inputs(self, features: Sequence[Features]) -> tuple[np.ndarray, ...]:
        return (_dense(features, self.width),)

    def logits(self, *inputs: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.net(torch.from_numpy(inputs[0])).numpy()

    def autograd(self, inputs: tuple[np.ndarray, ...], loss: Any) -> tuple[np.ndarray, np.ndarray, float, list[Grad]]:
        import torch

        self.net.zero_grad(set_to_none=True)
        logits = self.net(torch.from_numpy(inputs[0]))  # (B, K)
        total, per = loss(logits)
        grads: list[Grad] = [np.zeros_like(p) for p in self.params]
        if torch.isfinite(total):
            total.backward()
            grads = [np.zeros_like(q) if p.grad is None else p.grad.numpy()
                     for p, q in zip(self.net.parameters(), self.params, strict=True)]
        return logits.detach().numpy(), per.numpy(), float(total.detach()), grads


CACHED_NAMES = 1_000_000  # feature name -> bucket, per model: ~100 MB at most


def bucket(name: str, buckets: int) -> int:
    """Stable bucket of a feature name (CRC-32; Python's hash() is salted per process). A name with a lone
    surrogate (JSON can spell one, ``"\\ud800"``) hashes its code units as they are instead of failing."""
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) % buckets


class HashedSoftmax(SoftmaxModel):
    """Linear softmax over hashed feature names: bias (K,), table (buckets, K), sparse (row) gradients.

    Dense vectors are hashed by position (feature ``"i"``), zeros skipped.
    """

    sparse = True

    def __init__(self, cfg: ModelConfig) -> None:
        self.buckets = cfg.buckets
        self.bias = np.zeros(cfg.n_classes, dtype=np.float32)  # (K,)
        self.table = np.zeros((cfg.buckets, cfg.n_classes), dtype=np.float32)  # (buckets, K)
        self.params = [self.bias, self.table]
        self._cache: dict[str, int] = {}

    def row_params(self) -> frozenset[int]:
        return frozenset({1})

    def _bucket(self, name: str) -> int:
        b = self._cache.get(name)
        if b is None:
            b = bucket(name, self.buckets)
            if len(self._cache) < CACHED_NAMES:
                self._cache[name] = b
        return b

    def inputs(self, features: Sequence[Features]) -> tuple[np.ndarray, ...]:
        """(N,) buckets, (B,) each example's first position in them, (N,) values; named features in one pass
        of C-level maps (a Python call per feature was ~half the cost), dense vectors hashed by position."""
        if not all(isinstance(f, dict) for f in features):
            return self._mixed_inputs(features)
        names = list(chain.from_iterable(features))  # a dict iterates its names, in the order of its values
        try:
            idx = list(map(self._cache.__getitem__, names))
        except KeyError:  # names not seen yet (or past the cache's size)
            idx = list(map(self._bucket, names))
        lengths = np.fromiter(map(len, features), dtype=np.int64, count=len(features))
        offsets = np.zeros(len(features), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        vals = np.fromiter(chain.from_iterable(f.values() for f in features),  # type: ignore[union-attr]
                           dtype=np.float32, count=len(names))
        return np.array(idx, dtype=np.int64), offsets, vals

    def _mixed_inputs(self, features: Sequence[Features]) -> tuple[np.ndarray, ...]:
        idx: list[int] = []
        vals: list[float] = []
        offsets: list[int] = []
        for f in features:
            offsets.append(len(idx))
            if isinstance(f, np.ndarray):
                nz = np.flatnonzero(f)
                idx.extend(self._bucket(str(j)) for j in nz.tolist())
                vals.extend(f[nz].tolist())
            else:
                idx.extend(map(self._bucket, f))
                vals.extend(f.values())
        return (np.array(idx, dtype=np.int64), np.array(offsets, dtype=np.int64), np.array(vals, dtype=np.float32))

    def logits(self, *inputs: np.ndarray) -> np.ndarray:
        """(B, K) logits: per example, the value-weighted sum of its buckets' rows, plus the bias."""
        idx, offsets, vals = inputs
        full = _lengths(offsets, len(idx)) > 0  # (B,) bags with a feature: reduceat needs them
        if full.all():
            out = np.add.reduceat(self.table[idx] * vals[:, None], offsets, axis=0)
        else:
            out = np.zeros((len(offsets), self.table.shape[1]), dtype=np.float32)
            if full.any():
                out[full] = np.add.reduceat(self.table[idx] * vals[:, None], offsets[full], axis=0)
        return out + self.bias

    def param_grads(self, inputs: tuple[np.ndarray, ...], dlogits: np.ndarray) -> list[Grad]:
        """The bias's gradient, and the table's on the rows the batch touched (summed per row)."""
        idx, offsets, vals = inputs
        rows, summed = sum_rows(idx, vals[:, None] * dlogits[_bags(offsets, len(idx))])  # (R,), (R, K)
        return [dlogits.sum(axis=0), Rows(rows, summed)]


def sum_rows(idx: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique rows of ``idx`` and ``values`` summed per row: what coalescing a sparse tensor does."""
    if not len(idx):
        return idx, values
    order = np.argsort(idx, kind="stable")
    ordered = idx[order]
    new = np.empty(len(ordered), dtype=np.bool_)  # where a new row begins
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    return ordered[starts], np.add.reduceat(values[order], starts, axis=0)


def _lengths(offsets: np.ndarray, n: int) -> np.ndarray:
    """(B,) features per example, from the examples' (B,) start offsets into N features."""
    out = np.empty_like(offsets)
    out[:-1] = offsets[1:] - offsets[:-1]
    out[-1:] = n - offsets[-1:]
    return out


def _bags(offsets: np.ndarray, n: int) -> np.ndarray:
    """(N,) example index of each of the N features, from the examples' (B,) start offsets."""
    return np.repeat(np.arange(len(offsets)), _lengths(offsets, n))


def build_model(cfg: ModelConfig) -> SoftmaxModel:
    kinds: dict[str, type[SoftmaxModel]] = {"linear": LinearSoftmax, "mlp": MLPSoftmax, "hashed": HashedSoftmax}
    return kinds[cfg.kind](cfg)
