"""Row layout and sharding: which rows (and flat-state columns) of every parameter each shard holds.

A model's parameters are split by rows across ``shards`` servers: shard s
holds rows ``[lo_s, hi_s)`` of every parameter and the optimizer state of
those rows. SGD and Adagrad are element-wise, so a sharded server takes
exactly the step an unsharded one would.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cached_property
from math import prod
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from streamlearn.model import ModelConfig


def row_range(n_rows: int, shard: int, shards: int) -> tuple[int, int]:
    """Rows [lo, hi) of a tensor with n_rows rows that shard ``shard`` holds."""
    return (n_rows * shard) // shards, (n_rows * (shard + 1)) // shards


def merge(slices: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Whole parameters from the shards' row slices (``slices[s]``: shard s's, per parameter)."""
    return [np.concatenate(parts, axis=0) for parts in zip(*slices, strict=True)]


@dataclass(frozen=True)
class Layout:
    """Which columns of a model's flat state (:class:`~streamlearn.ps.state.FlatState`) each shard holds.

    Parameters are flattened row-major, so shard s's rows ``[lo, hi)`` of a
    parameter are one run of columns; a shard's own flat state is its runs
    concatenated in parameter order.
    """

    shapes: tuple[tuple[int, ...], ...]  # the full model's parameter shapes
    shards: int

    @classmethod
    def of(cls, model: ModelConfig, shards: int) -> Layout:
        from streamlearn.model import build_model  # (the model imports this package's state)

        return cls(build_model(model).shapes, shards)

    @cached_property
    def runs(self) -> list[list[slice]]:
        """runs[s][i]: the columns of parameter i that shard s holds."""
        out: list[list[slice]] = [[] for _ in range(self.shards)]
        at = 0
        for shape in self.shapes:
            cols = prod(shape[1:])
            for s in range(self.shards):
                lo, hi = row_range(shape[0], s, self.shards)
                out[s].append(slice(at + lo * cols, at + hi * cols))
            at += shape[0] * cols
        return out

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        """(R, P) -> one (R, P_s) array per shard."""
        if self.shards == 1:
            return [flat]
        return [np.concatenate([flat[:, r] for r in runs], axis=1) for runs in self.runs]

    def merge(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """Inverse of :meth:`split`."""
        if self.shards == 1:
            return parts[0]
        pieces, at = [], [0] * self.shards
        for i in range(len(self.shapes)):
            for s, part in enumerate(parts):
                n = self.runs[s][i].stop - self.runs[s][i].start
                pieces.append(part[:, at[s] : at[s] + n])
                at[s] += n
        return np.concatenate(pieces, axis=1)


@dataclass(frozen=True)
class RowLayout:
    """How a sparse model's row states (:class:`~streamlearn.ps.state.RowState`) split by shard.

    Shard s holds rows ``[lo_s, hi_s)`` of the row parameters, so of a sorted
    row list it takes one run, renumbered from ``lo_s``; the other parameters
    split as :class:`Layout` splits them.
    """

    n_rows: int  # rows of the row parameters (the hashed model's buckets)
    cols: int  # columns of one row, all row parameters side by side
    dense: Layout  # the other parameters

    @classmethod
    def of(cls, shapes: Sequence[tuple[int, ...]], row_params: Collection[int], shards: int) -> RowLayout:
        """From the full model's parameter shapes and which of them are row parameters."""
        first = min(row_params)
        return cls(shapes[first][0], sum(prod(shapes[i][1:]) for i in row_params),
                   Layout(tuple(sh for i, sh in enumerate(shapes) if i not in row_params), shards))

    def split(self, rows: np.ndarray, state: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(sorted rows, (A, W)) -> per shard (its rows in its own numbering, its (A, W_s) state)."""
        n = len(rows) * self.cols
        table, dense = state[:, :n], self.dense.split(state[:, n:])
        out, at = [], 0
        for mine, part in zip(self.cut(rows), dense, strict=True):
            out.append((mine, np.concatenate([table[:, at * self.cols : (at + len(mine)) * self.cols], part], axis=1)))
            at += len(mine)
        return out

    def cut(self, rows: np.ndarray) -> list[np.ndarray]:
        """Sorted rows -> each shard's, in its own numbering."""
        lows = [row_range(self.n_rows, s, self.dense.shards)[0] for s in range(self.dense.shards)]
        cuts = [*np.searchsorted(rows, lows).tolist(), len(rows)]
        return [rows[cuts[s] : cuts[s + 1]] - lows[s] for s in range(self.dense.shards)]

    def merge(self, parts: Sequence[np.ndarray], counts: Sequence[int]) -> np.ndarray:
        """Inverse of :meth:`split` for the states, shard s's with ``counts[s]`` rows."""
        if len(parts) == 1:
            return parts[0]
        cut = [c * self.cols for c in counts]
        dense = self.dense.merge([p[:, n:] for p, n in zip(parts, cut, strict=True)])
        return np.concatenate([p[:, :n] for p, n in zip(parts, cut, strict=True)] + [dense], axis=1)
