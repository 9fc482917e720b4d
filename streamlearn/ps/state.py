"""A model's state as plain float32 arrays, and the one SGD/Adagrad step every holder of it takes.

:class:`ModelState` is what a worker's replica, a server shard and the
single-process trainer each hold: the parameters (the model's own arrays,
updated in place), Adagrad's summed squared gradients, the step count and
the learning rate. :class:`FlatState` and :class:`RowState` view it as the
one array replicas and servers exchange.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from streamlearn.config.learning import OPTIMIZERS as OPTIMIZERS

ADAGRAD_EPS = 1e-10  # added to the root of the summed squares (torch's Adagrad default)


class Rows(NamedTuple):
    """A sparse gradient: sorted unique ``rows`` of a parameter and their summed ``values`` (R, ...)."""

    rows: np.ndarray
    values: np.ndarray


Grad = np.ndarray | Rows


class ModelState:
    """Parameters and optimizer accumulators as float32 arrays, stepped by plain SGD or Adagrad::

        SGD:      W -= lr g
        Adagrad:  S += g * g;   W -= lr g / (sqrt(S) + eps)

    ``params`` are the model's own arrays (shared, updated in place): a state
    load copies into them, so views taken of them stay valid.
    """

    def __init__(self, params: Sequence[np.ndarray], optimizer: str = "adagrad", lr: float = 0.3,
                 eps: float = ADAGRAD_EPS) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: unknown {optimizer!r}, choose one of {', '.join(OPTIMIZERS)}")
        self.params = list(params)
        self.optimizer = optimizer
        self.sums = [np.zeros_like(p) for p in self.params] if optimizer == "adagrad" else []
        self.lr = lr
        self.eps = eps
        self.steps = 0  # optimizer steps taken (checkpoints keep it)

    @property
    def adagrad(self) -> bool:
        return self.optimizer == "adagrad"

    def step(self, grads: Sequence[Grad], scale: float = 1.0) -> None:
        """One optimizer step with ``grads * scale``: dense arrays, or :class:`Rows` on some rows."""
        lr = np.float32(self.lr)
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            rows, grad = (g.rows, g.values) if isinstance(g, Rows) else (..., g)
            grad = np.asarray(grad, dtype=np.float32)
            if not self.adagrad:
                p[rows] -= np.float32(self.lr * scale) * grad
                continue
            if scale != 1.0:
                grad = grad * np.float32(scale)
            total = self.sums[i]
            total[rows] += grad * grad
            p[rows] -= lr * grad / (np.sqrt(total[rows]) + np.float32(self.eps))
        self.steps += 1

    def flat(self) -> FlatState:
        return FlatState(self)

    def row_state(self, row_params: Collection[int]) -> RowState:
        return RowState(self, row_params)

    def norm(self) -> float:
        """L2 norm of all parameters together."""
        return weight_norm(self.params)

    def state_dict(self) -> dict[str, Any]:
        """Copies of everything (plain arrays and numbers): what checkpoints and rollbacks keep."""
        return {"params": [p.copy() for p in self.params], "sums": [s.copy() for s in self.sums],
                "steps": self.steps, "lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p, v in zip(self.params, state["params"], strict=True):
            if p.shape != np.shape(v):
                raise ValueError(f"checkpoint shape {tuple(np.shape(v))} does not fit parameter {p.shape}")
            np.copyto(p, v)
        if self.adagrad:
            if len(state["sums"]) != len(self.sums):
                raise ValueError("checkpoint: its optimizer kept no Adagrad sums; this one is Adagrad")
            for s, v in zip(self.sums, state["sums"], strict=True):
                np.copyto(s, v)
        self.steps, self.lr = int(state["steps"]), float(state["lr"])


class FlatState:
    """A model's weights and its optimizer's accumulators as one (R, P) float32 array, over numpy views.

    Row 0 is every parameter flattened and concatenated (in ``params`` order);
    Adagrad adds row 1, its summed squared gradients (SGD keeps no state).
    This is the unit a dense model's replicas and servers exchange: a worker
    pushes the change its local steps made (an update, not gradients) and pulls
    the servers' state. Updates are float64: the difference of two float32
    states is exact there, and adding it to float32 rounds once, so a server
    that held the state an update started from ends on the worker's state to
    the bit (one worker stays exactly the single-process loop).
    """

    def __init__(self, state: ModelState, params: Collection[int] | None = None) -> None:
        """``params``: the indices of the parameters it covers (default all)."""
        self.state = state
        keep = range(len(state.params)) if params is None else sorted(params)
        self.rows = [[state.params[i].reshape(-1) for i in keep]]
        if state.adagrad:
            self.rows.append([state.sums[i].reshape(-1) for i in keep])

    def read(self, dtype: type = np.float32) -> np.ndarray:
        return np.stack([np.concatenate(row, dtype=dtype) if row else np.zeros(0, dtype) for row in self.rows])

    def write(self, flat: np.ndarray) -> None:
        for _, view, part in self._parts(flat):
            np.copyto(view, part)

    def add(self, delta: np.ndarray, scale: float = 1.0, steps: int = 0) -> None:
        """Add ``delta``: its weights row times ``scale``, its accumulator row times ``scale**2`` (what scaling
        each gradient by ``scale`` does to summed squares); count ``steps`` optimizer steps."""
        for r, view, part in self._parts(delta):
            view += part if scale == 1.0 else part * np.float32(scale ** (r + 1))
        self.state.steps += steps

    def _parts(self, flat: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(row, view, the slice of ``flat`` that belongs in it)."""
        width = sum(v.size for v in self.rows[0])
        if flat.shape != (len(self.rows), width):
            raise ValueError(f"a flat state of shape {flat.shape} does not fit {len(self.rows)} x {width}")
        for r, row in enumerate(self.rows):
            at = 0
            for view in row:
                yield r, view, flat[r, at : at + view.size]
                at += view.size


class RowState:
    """A sparse model's weights and accumulators on some rows, as one (A, W) array (float32 unless asked).

    The row parameters (the hashed table, ``SoftmaxModel.row_params``)
    give the rows asked for, the others all of themselves: row a of the array
    is ``[each row asked for, the row parameters' side by side; the other
    parameters, flattened]``, a = 0 the weights and, for Adagrad, a = 1 the
    summed squared gradients. It is the sparse counterpart of
    :class:`FlatState`: a worker pushes the change its steps made to the rows
    they touched, and a server replies with the same rows. Rows are sorted
    and unique; all row parameters have the same row count.
    """

    def __init__(self, state: ModelState, row_params: Collection[int]) -> None:
        self.state = state
        mine = sorted(row_params)
        self.dense = FlatState(state, [i for i in range(len(state.params)) if i not in row_params])
        self.table = [[state.params[i].reshape(state.params[i].shape[0], -1) for i in mine]]  # [a][param] (N, C)
        if state.adagrad:
            self.table.append([state.sums[i].reshape(state.sums[i].shape[0], -1) for i in mine])
        self.cols = sum(v.shape[1] for v in self.table[0])  # columns of one row, all row parameters

    def width(self, rows: int) -> int:
        """Columns of the state of ``rows`` rows."""
        return rows * self.cols + sum(v.size for v in self.dense.rows[0])

    def read(self, rows: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        dense = self.dense.read(dtype)
        return np.stack([np.concatenate([np.concatenate([v[rows] for v in views], axis=1, dtype=dtype).reshape(-1),
                                         d]) for views, d in zip(self.table, dense, strict=True)])

    def write(self, rows: np.ndarray, state: np.ndarray) -> None:
        for _, view, block in self._parts(rows, state):
            view[rows] = block
        self.dense.write(state[:, len(rows) * self.cols :])

    def add(self, rows: np.ndarray, delta: np.ndarray, scale: float = 1.0, steps: int = 0) -> None:
        """As :meth:`FlatState.add`, on ``rows`` of the row parameters and all of the others."""
        for a, view, block in self._parts(rows, delta):
            view[rows] += block if scale == 1.0 else block * np.float32(scale ** (a + 1))
        self.dense.add(delta[:, len(rows) * self.cols :], scale, steps)

    def _parts(self, rows: np.ndarray, state: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(a, view, the (R, C) block of ``state`` for its rows)."""
        if state.shape != (len(self.table), self.width(len(rows))):
            raise ValueError(f"a row state of shape {state.shape} does not fit {len(self.table)} x "
                             f"{self.width(len(rows))} ({len(rows)} rows)")
        for a, views in enumerate(self.table):
            block = state[a, : len(rows) * self.cols].reshape(len(rows), self.cols)
            at = 0
            for view in views:
                yield a, view, block[:, at : at + view.shape[1]]
                at += view.shape[1]


def weight_norm(params: Sequence[np.ndarray]) -> float:
    """L2 norm of all parameters together."""
    return float(np.sqrt(sum(float(np.dot(v, v)) for v in (p.ravel().astype(np.float64) for p in params))))
