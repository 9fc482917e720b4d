"""Softmax models: dense linear, a small MLP, and a hashed-sparse linear model.

Each model turns a list of feature values (dense vectors or name -> value
mappings, see :mod:`streamlearn.events`) into inputs with :meth:`inputs`, and
inputs into logits (B, K) with ``forward``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from itertools import chain

import numpy as np
import torch
from torch import nn

from streamlearn.config.learning import MODELS as MODELS
from streamlearn.config.learning import ModelConfig as ModelConfig
from streamlearn.events import Features


class SoftmaxModel(nn.Module):
    """Base: a module with an ``inputs`` featurizer."""

    sparse = False  # True when gradients touch only some rows (hashed)
    closed_form = False  # True when logits() and param_grads() give the gradient without autograd

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()

    def inputs(self, features: Sequence[Features]) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def row_params(self) -> frozenset[int]:
        """Indices (in ``parameters()`` order) of the parameters whose gradients touch only some rows."""
        return frozenset()


def _dense(features: Sequence[Features], width: int) -> torch.Tensor:
    out = np.zeros((len(features), width), dtype=np.float32)  # (B, D)
    for i, f in enumerate(features):
        if isinstance(f, np.ndarray):
            out[i] = f
        else:
            for name, v in f.items():
                j = int(name) if name.isascii() and name.isdigit() else -1  # not '²'
                if 0 <= j < width:
                    out[i, j] = v
    return torch.from_numpy(out)


class LinearSoftmax(SoftmaxModel):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.width = cfg.n_features
        self.linear = nn.Linear(cfg.n_features, cfg.n_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def inputs(self, features: Sequence[Features]) -> tuple[torch.Tensor, ...]:
        return (_dense(features, self.width),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # (B, K)

    closed_form = True

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(B, K) logits in numpy, from (B, D) inputs."""
        w = self.linear.weight.detach().numpy()  # (K, D), shares memory
        return x @ w.T + self.linear.bias.detach().numpy()

    def param_grads(self, inputs: tuple[np.ndarray, ...], dlogits: np.ndarray) -> list[torch.Tensor]:
        """d(loss)/d(weight, bias) from d(loss)/d(logits) (B, K): one matrix product."""
        (x,) = inputs
        return [torch.from_numpy(dlogits.T @ x), torch.from_numpy(dlogits.sum(axis=0))]


class MLPSoftmax(SoftmaxModel):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        torch.manual_seed(cfg.seed)
        self.width = cfg.n_features
        self.net = nn.Sequential(
            nn.Linear(cfg.n_features, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.n_classes)
        )

    def inputs(self, features: Sequence[Features]) -> tuple[torch.Tensor, ...]:
        return (_dense(features, self.width),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, K)


CACHED_NAMES = 1_000_000  # feature name -> bucket, per model: ~100 MB at most


def bucket(name: str, buckets: int) -> int:
    """Stable bucket of a feature name (CRC-32; Python's hash() is salted per process). A name with a lone
    surrogate (JSON can spell one, ``"\\ud800"``) hashes its code units as they are instead of failing."""
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) % buckets


class HashedSoftmax(SoftmaxModel):
    """Linear softmax over hashed feature names: weight (buckets, K), sparse gradients.

    Dense vectors are hashed by position (feature ``"i"``), zeros skipped.
    """

    sparse = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.buckets = cfg.buckets
        self.table = nn.EmbeddingBag(cfg.buckets, cfg.n_classes, mode="sum", sparse=True)
        self.bias = nn.Parameter(torch.zeros(cfg.n_classes))
        nn.init.zeros_(self.table.weight)
        self._cache: dict[str, int] = {}

    def row_params(self) -> frozenset[int]:
        return frozenset(i for i, p in enumerate(self.parameters()) if p is self.table.weight)

    def _bucket(self, name: str) -> int:
        b = self._cache.get(name)
        if b is None:
            b = bucket(name, self.buckets)
            if len(self._cache) < CACHED_NAMES:
                self._cache[name] = b
        return b

    def inputs(self, features: Sequence[Features]) -> tuple[torch.Tensor, ...]:
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
        return torch.from_numpy(np.array(idx, dtype=np.int64)), torch.from_numpy(offsets), torch.from_numpy(vals)

    def _mixed_inputs(self, features: Sequence[Features]) -> tuple[torch.Tensor, ...]:
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
        return (  # numpy first: torch.tensor(list) takes several times as long
            torch.from_numpy(np.array(idx, dtype=np.int64)),
            torch.from_numpy(np.array(offsets, dtype=np.int64)),
            torch.from_numpy(np.array(vals, dtype=np.float32)),
        )

    def forward(self, idx: torch.Tensor, offsets: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        return self.table(idx, offsets, per_sample_weights=vals) + self.bias  # (B, K)

    closed_form = True

    def logits(self, idx: np.ndarray, offsets: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """(B, K) logits in numpy: per example, the value-weighted sum of its buckets' rows, plus the bias."""
        table = self.table.weight.detach().numpy()  # (buckets, K), shares memory
        full = _lengths(offsets, len(idx)) > 0  # (B,) bags with a feature: reduceat needs them
        if full.all():
            out = np.add.reduceat(table[idx] * vals[:, None], offsets, axis=0)
        else:
            out = np.zeros((len(offsets), table.shape[1]), dtype=np.float32)
            if full.any():
                out[full] = np.add.reduceat(table[idx] * vals[:, None], offsets[full], axis=0)
        return out + self.bias.detach().numpy()

    def param_grads(self, inputs: tuple[np.ndarray, ...], dlogits: np.ndarray) -> list[torch.Tensor]:
        """A sparse (buckets, K) gradient on the rows the batch touched (coalesced), and the bias's."""
        idx, offsets, vals = inputs
        rows, summed = sum_rows(idx, vals[:, None] * dlogits[_bags(offsets, len(idx))])  # (R,), (R, K)
        table = torch.sparse_coo_tensor(torch.from_numpy(rows)[None, :], torch.from_numpy(summed),
                                        self.table.weight.shape, is_coalesced=True, check_invariants=False)
        return [torch.from_numpy(dlogits.sum(axis=0)), table]  # parameters() order: bias, then table.weight


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


def weight_norm(model: nn.Module) -> float:
    """L2 norm of all parameters together."""
    with torch.no_grad():
        return float(torch.sqrt(sum((p.double() ** 2).sum() for p in model.parameters())))  # type: ignore[arg-type]
