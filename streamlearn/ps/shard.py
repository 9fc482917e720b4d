"""A parameter-server shard: its rows of the model, versions, staleness, sync rounds.

Shard s holds rows ``[lo_s, hi_s)`` of every parameter (:mod:`streamlearn.ps.layout`).
The hashed model's gradients are sparse: a push carries only the rows a batch
touched, and a pull can ask for only the rows a batch needs.

Modes (``PSConfig.mode``):

* ``async``: apply every gradient on arrival.
* ``bounded``: like async, but a gradient computed on weights more than
  ``max_staleness`` versions old is dropped (or down-weighted by
  ``1 / (1 + excess)``), and counted.

* ``sync``: rounds. Every worker starts a round from the same weights, takes
  its group's local steps, and pushes their change (or an explicit
  "nothing"); the server averages the round's updates, weighted by their
  steps (a sparse model: per row, over the updates that touched it), adds
  the average, and replies to all at once (local SGD with periodic
  averaging; with one micro-batch per round and plain SGD, the average of
  the workers' gradients). A round also closes ``sync_timeout_seconds``
  after it opened, so a dead or stuck worker cannot stall the job. The
  waiting lives in the Ray actor (:mod:`streamlearn.actors`); :class:`Shard`
  only holds the round.

A worker pushes *updates*, not gradients: the change its own optimizer steps
made to its replica's weights and accumulators over a group of micro-batches
(a dense model's :class:`~streamlearn.ps.state.FlatState`, a sparse model's
:class:`~streamlearn.ps.state.RowState` on the rows the group touched), which
the server adds (:meth:`Shard.add_update`): one addition per push instead of
one optimizer step per gradient, and a push of two rows instead of one row
per gradient (Downpour SGD's accumulated updates). A version counts the
gradients in the model, so staleness counts gradients too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from streamlearn.learner import OptimConfig
from streamlearn.model import ModelConfig, build_model
from streamlearn.ps.config import PSConfig
from streamlearn.ps.layout import row_range
from streamlearn.ps.state import FlatState, ModelState, RowState
from streamlearn.ps.wire import PushResult

log = logging.getLogger(__name__)


class Contribution(NamedTuple):
    """A worker's update in an open sync round."""

    update: np.ndarray  # (R, P) flat state change, or (R, rows x cols + dense) row state change
    steps: int  # the optimizer steps it carries
    rows: np.ndarray | None  # a sparse model's rows (sorted, this shard's numbering)


def _row_mean(got: Sequence[Contribution], cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse updates averaged: each row over the updates that touched it, the dense part over all, each
    weighted by its steps. Returns (the union of the rows, the mean as a row state change on them)."""
    rows = np.unique(np.concatenate([c.rows for c in got if c.rows is not None]))
    first = got[0]
    assert first.rows is not None
    state_rows = first.update.shape[0]
    table = np.zeros((state_rows, len(rows), cols))  # (R, rows, cols) step-weighted sums
    weight = np.zeros(len(rows))  # steps per row
    dense = np.zeros_like(first.update[:, len(first.rows) * cols :])  # the dense parameters' sums
    for c in got:
        assert c.rows is not None
        at = np.searchsorted(rows, c.rows)
        n = len(c.rows) * cols
        table[:, at, :] += c.steps * c.update[:, :n].reshape(state_rows, len(c.rows), cols)
        weight[at] += c.steps
        dense += c.steps * c.update[:, n:]
    table /= np.maximum(weight, 1)[None, :, None]
    dense /= sum(c.steps for c in got)
    return rows, np.concatenate([table.reshape(state_rows, -1), dense], axis=1)


class Shard:
    """Rows [lo, hi) of every parameter, with their optimizer state and a version counter."""

    def __init__(self, index: int, cfg: PSConfig, model_cfg: ModelConfig, optim_cfg: OptimConfig) -> None:
        self.index, self.cfg = index, cfg
        full = build_model(model_cfg)  # the initial weights (the MLP's are seeded, the linear ones zero)
        self.sparse = full.row_params()  # parameters with row (sparse) gradients
        self.shapes = full.shapes
        self.ranges = [row_range(p.shape[0], index, cfg.shards) for p in full.params]
        self.params = [p[lo:hi].copy() for p, (lo, hi) in zip(full.params, self.ranges, strict=True)]
        del full
        self.state = ModelState(self.params, optim_cfg.name, optim_cfg.lr)
        self.version = 0
        self.clip_norm: float | None = None  # set by the divergence guard while diverging
        self._good: dict[str, Any] | None = None
        self.round: dict[int, Contribution | None] = {}  # sync: worker -> its update (None: it had nothing)

    # -- updates -----------------------------------------------------------

    def add_update(self, update: np.ndarray, count: int, version: int,
                   rows: np.ndarray | None = None) -> PushResult:
        """Async / bounded: add a worker's update, the change ``count`` of its own optimizer steps made.

        A dense model's update is a flat state (:class:`~streamlearn.learner.FlatState`); a sparse
        model's is a row state on ``rows``, this shard's own row numbers (:class:`~streamlearn.learner.RowState`).
        ``version`` is the version its first step started from, counting the
        worker's own earlier updates (which its replica applied locally), so
        staleness counts only updates the worker had not seen. A bounded-mode update
        too stale is dropped or down-weighted whole. The worker clipped each
        gradient with the clip norm the last reply told it.
        """
        stale = self.version - version
        out = PushResult(staleness=[stale] * count)
        if not self._finite(update, count):
            out.dropped, out.kept = count, [False] * count
            return self.stamp(out)
        scale = 1.0
        if self.cfg.mode == "bounded" and stale > self.cfg.max_staleness:
            if self.cfg.stale_policy == "drop":
                out.dropped, out.kept = count, [False] * count
                return self.stamp(out)
            scale = 1.0 / (1 + stale - self.cfg.max_staleness)
            out.downweighted = count
        if rows is None:
            self.flat().add(update, scale, steps=count)
        else:
            self.row_state().add(rows, update, scale, steps=count)
        self.version += count
        out.applied, out.kept = count, [True] * count
        return self.stamp(out)

    def _finite(self, update: np.ndarray, count: int) -> bool:
        """Whether an update may be added; one that is not finite is refused and logged (workers discard
        such groups themselves: this one is a bug, not data)."""
        if np.isfinite(update).all():
            return True
        log.error("shard %d: refused an update of %d steps that is not finite", self.index, count)
        return False

    def stamp(self, out: PushResult) -> PushResult:
        """Fill in what every reply tells a worker: the version, learning rate and clip norm now."""
        out.version = self.version
        out.lr = float(self.state.lr)
        out.clip_norm = self.clip_norm
        return out

    def add_to_round(self, worker: int, update: np.ndarray | None, count: int,
                     rows: np.ndarray | None = None) -> bool:
        """Sync: record this worker's update for the open round (None or no steps: it had nothing). An update
        that is not finite counts as nothing and returns False (its steps are not in the round)."""
        ok = update is None or self._finite(update, count)
        self.round[worker] = None if update is None or count <= 0 or not ok else Contribution(update, count, rows)
        return ok

    def close_round(self) -> int:
        """Sync: add the average of the round's updates; returns the gradients (steps) they carried."""
        got = [c for c in self.round.values() if c is not None]
        self.round = {}
        if not got:
            return 0
        steps = sum(c.steps for c in got)
        if len(got) == 1:  # one worker's update as sent: one worker stays the single-process loop to the bit
            rows, mean = got[0].rows, got[0].update
        elif not self.sparse:
            rows, mean = None, np.sum([c.update * c.steps for c in got], axis=0) / steps  # (R, P)
        else:
            rows, mean = _row_mean(got, self.row_state().cols)
        if rows is None:
            self.flat().add(mean, steps=max(c.steps for c in got))
        else:
            self.row_state().add(rows, mean, steps=max(c.steps for c in got))
        self.version += steps
        return steps

    # -- reads -------------------------------------------------------------

    def weights(self) -> list[np.ndarray]:
        return [p.copy() for p in self.params]

    def flat(self) -> FlatState:
        return self.state.flat()

    def row_state(self) -> RowState:
        return self.state.row_state(self.sparse)

    def norm_sq(self) -> float:
        return self.state.norm() ** 2

    # -- guard and checkpoints ---------------------------------------------

    def mark_good(self) -> None:
        self._good = self.snapshot()

    def has_good(self) -> bool:
        """Whether :meth:`rollback` has a state to go back to (the driver rolls back all shards or none)."""
        return self._good is not None

    def rollback(self) -> bool:
        """Restore the last good weights; an open sync round stays open (its pushes are still live).

        The version moves forward, past every version a replica could hold plus ``max_staleness``: rows a
        sparse replica loaded from the discarded weights are then stale and pulled again before use, and a
        bounded-mode update computed on them misses the bound.
        """
        if self._good is None:
            return False
        round_, version = self.round, self.version
        self._load(self._good)  # copied into the shard's arrays: the good state stays as it was
        self.round = round_
        self.version = version + self.cfg.max_staleness + 1
        return True

    def scale_lr(self, factor: float) -> None:
        self.state.lr *= factor

    def snapshot(self) -> dict[str, Any]:
        """Its state for a checkpoint: plain arrays and numbers (:meth:`ModelState.state_dict`)."""
        return {"index": self.index, **self.state.state_dict(), "version": self.version}

    def load(self, state: dict[str, Any]) -> None:
        """Take a checkpoint's state. The last good state goes: it may be newer than the checkpoint (updates a
        restore discards); the driver marks the restored state good."""
        self._load(state)
        self._good = None

    def _load(self, state: dict[str, Any]) -> None:
        if state["index"] != self.index:
            raise ValueError(f"checkpoint shard {state['index']} loaded into shard {self.index}")
        self.state.load_state_dict(state)
        self.version = state["version"]
        self.round = {}


class InOrder:
    """Runs each client's pushes in the order it sent them.

    A worker keeps a push in flight while it sends the next, and an async Ray
    actor may start calls in any order; Adagrad steps do not commute, so the
    server waits for a client's earlier push before applying a later one.
    Clients are keyed by a token per client object, so a restarted worker
    (a new client) starts its own count.
    """

    def __init__(self) -> None:
        self.next: dict[str, int] = {}
        self.waiting: dict[tuple[str, int], asyncio.Event] = {}

    async def turn(self, client: str, seq: int) -> None:
        """Return when push ``seq`` of ``client`` may run (all its earlier ones have started)."""
        expected = self.next.setdefault(client, seq)
        if seq > expected:
            event = self.waiting.setdefault((client, seq), asyncio.Event())
            await event.wait()
            del self.waiting[(client, seq)]
        self.next[client] = max(self.next[client], seq + 1)
        later = self.waiting.get((client, seq + 1))
        if later is not None:
            later.set()
