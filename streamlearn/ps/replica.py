"""A worker's replica of the model, and how the servers' state merges into it.

A worker steps its replica's own optimizer and pushes what the steps changed
(:mod:`streamlearn.worker`); the servers' replies and pulls come back here.
A reply is merged as a delta, ``replica += server - base``, where ``base``
is the replica's state when the push went out: the worker keeps the steps it
took since, and with one worker the replica stays the servers' model exactly.
A pull is copied. A dense model's state is its flat state
(:class:`~streamlearn.ps.state.FlatState`), a sparse one's the rows a push or
pull covers (:class:`~streamlearn.ps.state.RowState`).
"""

from __future__ import annotations

import numpy as np

from streamlearn.learner import Learner

NEVER = np.iinfo(np.int64).min // 2  # loaded_at of a row never loaded


class Replica:
    """The worker's model (its learner) plus, for row updates, the version each row was last loaded at."""

    def __init__(self, learner: Learner, row_updates: bool) -> None:
        self.learner = learner
        rows = learner.model.row_params()
        n_rows = learner.params[min(rows)].shape[0] if rows else 0
        self.loaded_at = np.full(n_rows, NEVER, dtype=np.int64) if row_updates else None

    def state(self, rows: np.ndarray | None) -> np.ndarray:
        """The state (float64) an update is a change of: a dense model's flat state, a sparse one's on ``rows``."""
        if rows is None:
            return self.learner.flat().read(np.float64)
        return self.learner.row_state().read(rows, np.float64)

    def stale(self, rows: np.ndarray, version: int, max_staleness: int) -> np.ndarray:
        """Those of ``rows`` last loaded more than ``max_staleness`` versions before ``version``, or never."""
        assert self.loaded_at is not None
        return rows[self.loaded_at[rows] < version - max_staleness]

    def forget(self) -> None:
        """Every row must be loaded again (after a restore)."""
        if self.loaded_at is not None:
            self.loaded_at[:] = NEVER

    def load_flat(self, state: np.ndarray, base: np.ndarray | None, inflight: np.ndarray | None) -> float:
        """A dense model: the servers' flat state, copied or (with ``base``) merged as a delta. Returns the
        squared distance the weights moved.

        ``inflight``, the base of the push in flight, was taken before this merge: it moves by exactly what
        the replica moved (after float32 rounding), so replica - base stays the worker's own steps since,
        and the accumulators, sums of squares, stay >= 0 (a base off by a rounding error once left one at
        -6e-15, and the next Adagrad step took its square root).
        """
        flat = self.learner.flat()
        current = flat.read(np.float64)
        merged = _merged(current, state, base)
        flat.write(merged)
        moved = merged[0] - current[0]
        if base is not None and inflight is not None:
            inflight += merged - current
        return float(np.dot(moved, moved))

    def load_row_state(self, rows: np.ndarray, state: np.ndarray, base: np.ndarray | None, version: int,
                       inflight: tuple[np.ndarray, np.ndarray] | None) -> float:
        """A sparse model: the servers' state on ``rows`` at ``version``, copied or merged as a delta (as
        :meth:`load_flat` does); ``inflight``, the push in flight's (base, rows), moves by what its rows and
        the dense parameters moved."""
        assert self.loaded_at is not None
        rs = self.learner.row_state()
        current = rs.read(rows, np.float64)
        merged = _merged(current, state, base)
        rs.write(rows, merged)
        change = merged - current
        if base is not None and inflight is not None:
            their_base, their_rows = inflight
            _, mine, theirs = np.intersect1d(rows, their_rows, assume_unique=True, return_indices=True)
            cols = np.arange(rs.cols)
            shared = change[:, (mine[:, None] * rs.cols + cols).ravel()]  # the rows both cover, in its order
            their_base[:, (theirs[:, None] * rs.cols + cols).ravel()] += shared
            their_base[:, len(their_rows) * rs.cols :] += change[:, len(rows) * rs.cols :]
        self.loaded_at[rows] = version
        return float(np.dot(change[0], change[0]))


def _merged(current: np.ndarray, state: np.ndarray, base: np.ndarray | None) -> np.ndarray:
    """The replica's new state (float32): the servers' ``state`` copied, or with ``base`` added as a delta
    to ``current``; accumulators (rows 1:) clipped at 0, so a rounding error never leaves one negative."""
    merged = state.astype(np.float32) if base is None else (current + (state - base)).astype(np.float32)
    np.maximum(merged[1:], 0, out=merged[1:])
    return merged
