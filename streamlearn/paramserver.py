"""Parameter-server shards: optimizer steps, versions, staleness, row sharding.

A model's parameters are split by rows across ``shards`` servers: shard s
holds rows ``[lo_s, hi_s)`` of every parameter tensor and the optimizer state
of those rows. SGD and Adagrad are element-wise, so a sharded server takes
exactly the step an unsharded one would. The hashed model's gradients are
sparse: a push carries only the rows a batch touched, and a pull can ask for
only the rows a batch needs.

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
(a dense model's :class:`~streamlearn.learner.FlatState`, a sparse model's
:class:`~streamlearn.learner.RowState` on the rows the group touched), which
the server adds (:meth:`Shard.add_update`): one addition per push instead of
one optimizer step per gradient, and a push of two rows instead of one row
per gradient (Downpour SGD's accumulated updates). A version counts the
gradients in the model, so staleness counts gradients too.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from math import prod
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from streamlearn.config.runtime import PS_MODES as PS_MODES
from streamlearn.config.runtime import STALE_POLICIES as STALE_POLICIES
from streamlearn.config.runtime import PSConfig as PSConfig
from streamlearn.learner import FlatState, OptimConfig, RowState, build_optimizer
from streamlearn.model import ModelConfig, build_model

log = logging.getLogger(__name__)


def row_range(n_rows: int, shard: int, shards: int) -> tuple[int, int]:
    """Rows [lo, hi) of a tensor with n_rows rows that shard ``shard`` holds."""
    return (n_rows * shard) // shards, (n_rows * (shard + 1)) // shards


def merge(slices: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Whole dense tensors from the shards' row slices (``slices[s]``: shard s's, per parameter)."""
    return [torch.cat(parts, dim=0) for parts in zip(*slices, strict=True)]


@dataclass(frozen=True)
class Layout:
    """Which columns of a model's flat state (:class:`~streamlearn.learner.FlatState`) each shard holds.

    Parameters are flattened row-major, so shard s's rows ``[lo, hi)`` of a
    parameter are one run of columns; a shard's own flat state is its runs
    concatenated in parameter order.
    """

    shapes: tuple[tuple[int, ...], ...]  # the full model's parameter shapes
    shards: int

    @classmethod
    def of(cls, model: ModelConfig, shards: int) -> Layout:
        return cls(tuple(tuple(p.shape) for p in build_model(model).parameters()), shards)

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
    """How a sparse model's row states (:class:`~streamlearn.learner.RowState`) split by shard.

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


@dataclass
class PushResult:
    applied: int = 0  # gradients applied
    dropped: int = 0  # bounded mode: too stale, not applied
    downweighted: int = 0
    staleness: list[int] = field(default_factory=list)  # per gradient, versions behind
    kept: list[bool] = field(default_factory=list)  # per gradient, applied (not dropped as stale)
    version: int = 0  # the shard's version after the push
    lr: float | None = None  # the servers' learning rate (the guard may lower it): workers step with it
    clip_norm: float | None = None  # the guard's gradient clip while diverging: workers clip with it
    held: float = 0.0  # seconds the server held the push before replying (sync mode: the wait for the round)


def combine(results: Sequence[PushResult]) -> PushResult:
    """One push's result from its shards' (shard 0's version, learning rate and clip). A gradient counts as
    kept only if every shard kept it: in bounded mode each shard judges staleness by its own version, and
    pushes of two workers can reach two shards in opposite orders, so near the bound one shard may drop what
    another applied; its examples are then not credited (the model holds part of it: counted as dropped)."""
    first = results[0]
    if len(results) == 1:
        return first  # (the worker waits for the slowest shard: its hold is the push's)
    kept = [all(k) for k in zip(*(r.kept for r in results), strict=True)]
    return replace(first, kept=kept, dropped=kept.count(False), applied=kept.count(True),
                   downweighted=max(r.downweighted for r in results), held=max(r.held for r in results))


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
        full = build_model(model_cfg)
        self.sparse = full.row_params()  # parameters with row (sparse) gradients
        self.shapes = tuple(tuple(p.shape) for p in full.parameters())
        self.ranges = [row_range(p.shape[0], index, cfg.shards) for _, p in full.named_parameters()]
        self.params = [nn.Parameter(p.detach()[lo:hi].clone()) for (_, p), (lo, hi)
                       in zip(full.named_parameters(), self.ranges, strict=True)]
        self.optimizer = build_optimizer(optim_cfg, self.params)
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
        out.lr = float(self.optimizer.param_groups[0]["lr"])
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

    def weights(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]

    def flat(self) -> FlatState:
        return FlatState(self.optimizer, self.params)

    def row_state(self) -> RowState:
        return RowState(self.optimizer, self.params, self.sparse)

    def norm_sq(self) -> float:
        return float(sum(float((p.detach().double() ** 2).sum()) for p in self.params))

    # -- guard and checkpoints ---------------------------------------------

    def mark_good(self) -> None:
        self._good = self.state()

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
        self._load(copy.deepcopy(self._good))
        self.round = round_
        self.version = version + self.cfg.max_staleness + 1
        return True

    def scale_lr(self, factor: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] *= factor

    def state(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "params": [p.detach().clone() for p in self.params],
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "version": self.version,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Take a checkpoint's state. The last good state goes: it may be newer than the checkpoint (updates a
        restore discards); the driver marks the restored state good."""
        self._load(state)
        self._good = None

    def _load(self, state: dict[str, Any]) -> None:
        if state["index"] != self.index:
            raise ValueError(f"checkpoint shard {state['index']} loaded into shard {self.index}")
        with torch.no_grad():
            for p, v in zip(self.params, state["params"], strict=True):
                if p.shape != v.shape:
                    raise ValueError(f"checkpoint shape {tuple(v.shape)} does not fit parameter {tuple(p.shape)}")
                p.copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
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


@dataclass
class Done:
    """A push that already happened (in process): its reply."""

    reply: tuple[PushResult, Any]
    ready: bool = False  # what done() says: False keeps the worker's pipelined path (a push in flight)

    def result(self) -> tuple[PushResult, Any]:
        return self.reply

    def done(self) -> bool:
        return self.ready


class LocalParamClient:
    """In-process shards behind the worker's ParamClient interface (async and bounded modes).

    For tests and single-process runs; the Ray client is
    :class:`streamlearn.actors.RayParamClient`. Replies have the Ray
    client's shapes: a dense model's flat state, a sparse model's rows.
    ``replies_ready``: whether a push's reply reports itself there before the
    worker's next group (a Ray reply usually is; False exercises the worker's
    merge with a push still in flight).
    """

    def __init__(self, shards: Sequence[Shard], replies_ready: bool = False) -> None:
        if any(s.cfg.mode == "sync" for s in shards):
            raise ValueError("LocalParamClient: sync rounds need the Ray actor (it waits for every worker)")
        self.shards = list(shards)
        self.replies_ready = replies_ready
        self.layout = Layout(self.shards[0].shapes, len(self.shards))
        if self.shards[0].sparse:
            self.rows_layout = RowLayout.of(self.shards[0].shapes, self.shards[0].sparse, len(self.shards))

    def submit_update(self, worker: int, update: np.ndarray, count: int, version: int,
                      pull: bool = False) -> Done:
        results = [s.add_update(u, count, version) for s, u in zip(self.shards, self.layout.split(update),
                                                                   strict=True)]
        return Done((combine(results), self.pull()[1] if pull else None), self.replies_ready)

    def submit_rows(self, worker: int, rows: np.ndarray, update: np.ndarray, count: int, version: int) -> Done:
        parts = self.rows_layout.split(rows, update)
        results = [s.add_update(u, count, version, r) for s, (r, u) in zip(self.shards, parts, strict=True)]
        state = self.rows_layout.merge([s.row_state().read(r) for s, (r, _) in zip(self.shards, parts, strict=True)],
                                       [len(r) for r, _ in parts])
        return Done((combine(results), state), self.replies_ready)

    def pull_rows(self, rows: np.ndarray) -> tuple[int, np.ndarray]:
        parts = self.rows_layout.cut(rows)
        return self.shards[0].version, self.rows_layout.merge(
            [s.row_state().read(r) for s, r in zip(self.shards, parts, strict=True)], [len(r) for r in parts])

    def pull(self) -> tuple[int, np.ndarray]:
        return self.shards[0].version, self.layout.merge([s.flat().read() for s in self.shards])
