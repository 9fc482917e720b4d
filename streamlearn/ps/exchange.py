"""A worker's side of the parameter exchange: its push in flight, its pulls, and what the replies credit.

The worker learns a group of micro-batches on its replica and hands the
change to :meth:`Exchange.push`; everything after that lives here: the
version its replica is at, how many of its own steps the servers hold, the
one push in flight (pipelined outside sync mode, settled at once in sync
mode), when to pull (:meth:`Exchange.pull_due`, :meth:`Exchange.pull_stale`),
the learning rate and clip the servers' replies set, and the lineage of the
examples the servers applied. Replies and pulls merge into the replica
(:mod:`streamlearn.ps.replica`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING

import numpy as np

from streamlearn.events import Example
from streamlearn.learner import Learner
from streamlearn.ps.client import ParamClient, PendingPush
from streamlearn.ps.config import PSConfig
from streamlearn.ps.replica import Replica

if TYPE_CHECKING:
    from streamlearn.worker import StepResult

log = logging.getLogger(__name__)

_LINEAGE_KEY = attrgetter("partition", "positive")


@dataclass
class Push:
    """A push whose reply is not settled yet."""

    pending: PendingPush
    kept: list[list[Example]]  # the micro-batches whose gradients it carries
    base: np.ndarray | None  # the replica's flat or row state (float64) when it was sent, if the reply brings one
    rows: np.ndarray | None  # a sparse model's update: the rows it and its reply cover
    sent: int  # Exchange.sent once it went out: the servers' reply includes that many own gradients
    started: float


class Exchange:
    """One worker's pushes and pulls; ``out`` arguments are the step's result, which it accounts into."""

    def __init__(self, worker: int, learner: Learner, ps: ParamClient, cfg: PSConfig) -> None:
        self.id, self.learner, self.ps, self.cfg = worker, learner, ps, cfg
        # a push is an update (not gradients): a dense model's flat state, a sparse one's rows
        self.row_updates = learner.model.sparse
        self.replica = Replica(learner, self.row_updates)  # merges replies and pulls into the learner's model
        self.applied: Counter[tuple[int, str]] = Counter()  # lineage: examples in the model
        self.version = 0
        self.pushes_since_pull = 0
        self.sent = 0  # own gradients applied to the replica and pushed (outside sync mode), ever
        self.sent_at_pull = 0  # how many of them the last pulled weights include
        self.behind = 0  # versions the replica lagged at the last push
        self.pulled_once = False
        self.inflight: Push | None = None
        self.clip_norm: float | None = None  # the servers' gradient clip, from their last reply

    def before_group(self, rows: np.ndarray | None, out: StepResult) -> None:
        """Before learning a group: settle a push whose reply is there, then pull what is due (a sparse
        model: the group's stale ``rows``)."""
        if self.inflight is not None and self.inflight.pending.done():
            self.settle(self.inflight, out)  # free now: the group then starts from one push fresher weights
        if rows is not None:
            self.pull_stale(rows, out)
        elif self.pull_due():
            self.pull(out)

    def flush(self, out: StepResult) -> None:
        """Settle the push in flight, if any: afterwards the servers hold every gradient sent."""
        if self.inflight is not None:
            self.settle(self.inflight, out)

    def forget(self) -> None:
        """After a restore: nothing in flight, and the whole replica must be loaded again."""
        self.pulled_once = False
        self.inflight = None
        self.replica.forget()

    def push_nothing(self, out: StepResult) -> None:
        """Sync mode: say "nothing this round" (an update of no steps), so the round can close."""
        rows = np.zeros(0, dtype=np.int64) if self.row_updates else None
        self.push(np.zeros_like(self.replica.state(rows)), [], out, pull=True, rows=rows)

    def resync(self, out: StepResult) -> None:
        """The replica holds non-finite numbers, so every batch fails and nothing is pushed (nor pulled):
        settle what is in flight, then take the servers' state whole with the next group."""
        log.warning("worker %d: replica not finite, pulling the servers' state", self.id)
        if self.inflight is not None:
            self.settle(self.inflight, out)
        self.pulled_once = False

    def push(self, update: np.ndarray, kept: list[list[Example]], out: StepResult, pull: bool = False,
              state: np.ndarray | None = None, rows: np.ndarray | None = None) -> None:
        """Send a group's update; settle the previous push (pipelined) or this one (sync mode).
        ``state``: the replica's state (float64) now, if the caller has just read it; ``rows``: a sparse
        model's update is on these rows."""
        t = time.perf_counter()
        base = (self.replica.state(rows) if state is None else state) if pull else None
        # the replica already holds our own earlier gradients since the last pull
        version = self.version + self.local_since_pull
        if rows is not None:
            pending = self.ps.submit_rows(self.id, rows, update, len(kept), version)
        else:
            pending = self.ps.submit_update(self.id, update, len(kept), version, pull)
        self.sent += len(kept)
        out.push_seconds += time.perf_counter() - t
        out.pushes += 1
        sent = Push(pending, kept, base, rows, self.sent, t)
        previous, self.inflight = self.inflight, sent
        if previous is not None:
            self.settle(previous, out)
        if self.cfg.mode == "sync":
            self.settle(sent, out)

    def settle(self, push: Push, out: StepResult) -> None:
        """Wait for a push's reply and account for it."""
        if push is self.inflight:
            self.inflight = None
        t = time.perf_counter()
        result, weights = push.pending.result()
        waited = time.perf_counter() - t
        self._waited(out, waited)
        out.push_held_seconds += min(result.held, waited)  # what the reply was still held for, at most
        out.staleness.extend(result.staleness)
        self.behind = max(result.staleness, default=0)
        out.dropped += result.dropped
        out.downweighted += result.downweighted
        self.pushes_since_pull += 1
        if result.lr is not None and result.lr != self.learner.lr:
            self.learner.set_lr(result.lr)
        self.clip_norm = result.clip_norm
        if weights is not None:
            self.load(result.version, weights, out, base=push.base, sent=push.sent, rows=push.rows)
        # credit the examples of every gradient the server applied (sync: averaged into the round's update)
        kept = push.kept
        if result.kept:
            out.dropped_examples += sum(len(b) for b, ok in zip(kept, result.kept, strict=True) if not ok)
            kept = [b for b, ok in zip(kept, result.kept, strict=True) if ok]
        credited = Counter(map(_LINEAGE_KEY, chain.from_iterable(kept)))  # (partition, positive) -> examples
        for (partition, positive), n in credited.items():
            key = (partition, "positive" if positive else "negative")
            self.applied[key] += n
            out.applied[key] += n

    def pull_due(self, after_push: bool = False) -> bool:
        """Dense models pull with the push that makes one due (sync mode: every push, the round's average);
        sparse ones get their rows in every push's reply and pull the stale ones first (:meth:`pull_stale`)."""
        if self.row_updates:
            return after_push
        if not after_push:
            return not self.pulled_once
        return (self.cfg.mode == "sync" or self.pushes_since_pull + 1 >= self.cfg.pull_every
                or (self.cfg.mode == "bounded" and self.behind >= self.cfg.max_staleness))

    def pull_stale(self, rows: np.ndarray, out: StepResult) -> None:
        """A sparse model: pull the rows a group needs that the replica last loaded more than
        ``max_staleness`` versions ago (or never), so that no row a gradient reads is older than that.
        Rows a worker keeps touching come back fresh in every push's reply; this is for the others."""
        stale = self.replica.stale(rows, self.version, self.cfg.max_staleness)
        if len(stale) and self.inflight is not None:
            self.settle(self.inflight, out)  # so that the servers' rows include every own step
            stale = self.replica.stale(rows, self.version, self.cfg.max_staleness)  # its reply refreshed some
        if not len(stale):
            return
        t = time.perf_counter()
        version, state = self.ps.pull_rows(stale)
        self._waited(out, time.perf_counter() - t)
        self.load(version, state, out, rows=stale)

    def pull(self, out: StepResult) -> None:
        """A dense model: take the servers' flat state whole."""
        t = time.perf_counter()
        version, state = self.ps.pull()
        self._waited(out, time.perf_counter() - t)
        self.load(version, state, out)

    @staticmethod
    def _waited(out: StepResult, seconds: float) -> None:
        """Time spent waiting for the servers' reply (a push's when settling it, or a pull's): push time, and
        its waiting part."""
        out.push_seconds += seconds
        out.push_wait_seconds += seconds

    @property
    def local_since_pull(self) -> int:
        """Own gradients in the replica that the last pulled version does not include."""
        return self.sent - self.sent_at_pull

    def load(self, version: int, update: np.ndarray, out: StepResult, base: np.ndarray | None = None,
              sent: int | None = None, rows: np.ndarray | None = None) -> None:
        """Take the servers' weights (which include ``sent`` own gradients, default all); with ``base``
        (the replica's state when the push went out) as a delta on top of the own steps taken since.
        ``rows``: a sparse model's row state on those rows."""
        inflight = self.inflight
        if rows is not None:
            theirs = None if inflight is None or inflight.base is None or inflight.rows is None else \
                (inflight.base, inflight.rows)
            drift = self.replica.load_row_state(rows, update, base, version, theirs)
        else:
            drift = self.replica.load_flat(update, base, None if inflight is None else inflight.base)
        if self.pulled_once:
            out.replica_drift = drift**0.5
        self.pulled_once = True
        self.version = version
        self.pushes_since_pull = 0
        self.sent_at_pull = self.sent if sent is None else sent
