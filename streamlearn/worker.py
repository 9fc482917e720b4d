"""A worker: consume its partitions, join, micro-batch, compute gradients, push, pull.

Plain Python: the Ray actor in :mod:`streamlearn.actors` wraps it, and the
parameter servers are reached through a :class:`ParamClient`, so the worker
is testable without Ray or Kafka.

One :meth:`Worker.step` polls until it holds a push's worth of examples (at
most STEP_POLLS x max_records records) and trains on every full micro-batch,
in groups: one call to the servers per group (never one call per event), of
at least ``grads_per_push`` micro-batches, more while pushes take more than
``push_budget`` of the worker's time (:mod:`streamlearn.cadence`). In sync
mode, where every push waits for a round, a step is one round: it pushes its
group at once, so that every worker pushes once per step and rounds cost what
the cadence allows. The worker steps its replica's own optimizer on
each micro-batch and sends what the group's steps changed, weights and
Adagrad accumulators: a dense model's whole flat state (one update of two
rows however many micro-batches), a sparse model's rows that the group
touched and its dense parameters. A dense replica pulls fresh weights every
``pull_every`` pushes, or as soon as it is ``max_staleness`` versions behind
(sync mode: with every push, the round's result); a sparse one gets its
pushed rows back in every reply and pulls, before a group, the rows it needs
that it last loaded more than ``max_staleness`` versions ago. Replies also
set its learning rate and gradient clip (the divergence guard changes them
at the servers).

Outside sync mode a push does not block: the worker sends group
i and goes on (polling, decoding, computing group i + 1, across steps) while
the servers apply group i. It settles the reply of group i before computing
group i + 1 if the reply is already there (it usually is: a group's work is
~20x a push's round trip), so the group starts from weights one push
fresher; otherwise when it sends the next push. At most one push is in
flight; :meth:`Worker.flush` settles it (the driver calls it before a
checkpoint or a recovery, and a draining step does), and a step's result
credits only settled pushes. A reply's weights are merged
as a delta, ``replica += server - replica_at_push`` (accumulators too), so the
worker keeps its own newer local steps and one worker still reproduces the
single-process loop (the merges: :mod:`streamlearn.replica`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Any, Protocol

import numpy as np

from streamlearn.cadence import PushCadence
from streamlearn.events import Example
from streamlearn.ingest import DeadLetter, Ingest
from streamlearn.learner import BatchStats, Learner
from streamlearn.paramserver import PSConfig, PushResult
from streamlearn.replica import Replica
from streamlearn.source import EventSource, TopicPartition

log = logging.getLogger(__name__)

_LINEAGE_KEY = attrgetter("partition", "positive")
LOSS_SAMPLE = 64  # per-example losses a step reports for the loss histogram (a sample: cheap)


def tune_gc() -> None:
    """Collect garbage less often in a worker process.

    The hot loop allocates a few small objects per event, many of them long
    lived (events waiting in the join), and CPython's default thresholds then
    spend a third of decoding time in collections (benchmarks/decode_speed.py
    has the row). The loop creates no reference cycles to speak of, so fewer
    and larger young collections lose nothing.
    """
    gc.set_threshold(50_000, 20, 100)


class PendingPush(Protocol):
    def result(self) -> tuple[PushResult, np.ndarray | None]:
        """Wait for the servers' reply."""
        ...

    def done(self) -> bool:
        """Whether the reply is there (result() would not wait)."""
        ...


class DeadLetters(Protocol):
    """Where a worker's dead letters go (:class:`~streamlearn.kafka_source.DeadLetterSink`): a write never
    raises; letters the broker has not acknowledged wait for :meth:`retry` and travel in checkpoints."""

    def write_many(self, dead: list[DeadLetter]) -> None: ...

    def retry(self) -> int:
        """Send again what failed, if its backoff has passed (cheap when nothing waits); how many went."""
        ...

    def flush(self, timeout_s: float | None = None) -> None: ...

    def unacked(self) -> list[DeadLetter]:
        """Letters written and not yet acknowledged, in write order."""
        ...

    def close(self) -> None: ...


SINK_FLUSH_SECONDS = 10.0  # a snapshot waits this long for dead letters in flight; the rest go in it


class ParamClient(Protocol):
    def submit_update(self, worker: int, update: np.ndarray, count: int, version: int,
                      pull: bool = False) -> PendingPush:
        """Send a dense update (the change of ``count`` local steps) without waiting; with ``pull``, the reply
        also carries the servers' flat state after applying it."""
        ...

    def submit_rows(self, worker: int, rows: np.ndarray, update: np.ndarray, count: int,
                    version: int) -> PendingPush:
        """Send a sparse model's update on ``rows`` (sorted) without waiting; the reply carries those rows'
        state after applying it (a :class:`~streamlearn.learner.RowState` array)."""
        ...

    def pull(self) -> tuple[int, np.ndarray]:
        """A dense model's flat state (weights and accumulators, :class:`~streamlearn.learner.FlatState`)."""
        ...

    def pull_rows(self, rows: np.ndarray) -> tuple[int, np.ndarray]:
        """A sparse model's state (weights and accumulators) on ``rows`` (sorted)."""
        ...


@dataclass
class StepResult:
    """What one step did: the driver turns it into metrics and progress."""

    worker: int
    records: int = 0
    polled_empty: bool = False  # a poll came back with nothing (a step holding a push's worth polls not at all)
    stats: BatchStats = field(default_factory=BatchStats)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, outcome) deltas
    join: Counter[str] = field(default_factory=Counter)  # join outcome deltas
    dead: Counter[str] = field(default_factory=Counter)  # dead letters by reason
    applied: Counter[tuple[int, str]] = field(default_factory=Counter)  # (partition, polarity) deltas
    staleness: list[int] = field(default_factory=list)
    dropped: int = 0  # gradients past the staleness bound, not applied
    dropped_examples: int = 0  # their examples: not in the model
    downweighted: int = 0
    pushes: int = 0
    version: int = 0
    replica_drift: float | None = None
    batch_seconds: list[float] = field(default_factory=list)  # compute per group (gradients, local steps)
    push_seconds: float = 0.0  # in calls to the servers: sending pushes, waiting for replies not yet there, pulls
    push_wait_seconds: float = 0.0  # the waiting (and reading) part: replies fetched when settling
    # the part of that wait the servers held the push (sync mode: for the round): push_seconds less this is
    # the calls' own cost
    push_held_seconds: float = 0.0
    step_seconds: float = 0.0  # the whole step: poll, decode, join, compute, push
    pending: int = 0
    exhausted: bool = False
    lag: dict[TopicPartition, int] = field(default_factory=dict)


@dataclass
class _Push:
    """A push whose reply is not settled yet."""

    pending: PendingPush
    kept: list[list[Example]]  # the micro-batches whose gradients it carries
    base: np.ndarray | None  # the replica's flat or row state (float64) when it was sent, if the reply brings one
    rows: np.ndarray | None  # a sparse model's update: the rows it and its reply cover
    sent: int  # Worker.sent once it went out: the servers' reply includes that many own gradients
    started: float


STEP_POLLS = 8  # a step may poll this many times max_records records to gather a push's worth


def step_records(max_records: int) -> int:
    """The most records one step polls."""
    return max_records * STEP_POLLS


class Worker:
    def __init__(self, worker: int, learner: Learner, ingest: Ingest, source: EventSource, ps: ParamClient,
                 ps_cfg: PSConfig, dead_letters: DeadLetters | None = None,
                 max_records: int = 2000) -> None:
        self.id = worker
        self.learner, self.ingest, self.source, self.ps, self.cfg = learner, ingest, source, ps, ps_cfg
        self.dead_letters = dead_letters
        self.max_records = max_records
        self.buffer: list[Example] = []
        self.applied: Counter[tuple[int, str]] = Counter()  # lineage: examples in the model
        self.version = 0
        self.pushes_since_pull = 0
        self.sent = 0  # own gradients applied to the replica and pushed (outside sync mode), ever
        self.sent_at_pull = 0  # how many of them the last pulled weights include
        self._behind = 0  # versions the replica lagged at the last push
        self._pulled_once = False
        self._inflight: _Push | None = None
        # a push is an update (not gradients): a dense model's flat state, a sparse one's rows
        self.row_updates = learner.model.sparse
        self.replica = Replica(learner, self.row_updates)  # merges replies and pulls into the learner's model
        self.clip_norm: float | None = None  # the servers' gradient clip, from their last reply
        self.cadence = PushCadence(ps_cfg.grads_per_push, ps_cfg.most_grads_per_push, ps_cfg.push_budget)
        learner.warm_up()  # before the first step: its time must not hold up the stream or skew the cadence

    # -- the loop ------------------------------------------------------------

    def step(self, drain: bool = False, limit: int | None = None) -> StepResult:
        """Poll once (at most ``limit`` records, if given) and learn from every full micro-batch; ``drain``
        also learns a partial one."""
        started = time.perf_counter()
        out = StepResult(self.id)
        before_counts, before_join = Counter(self.ingest.counts), self.ingest.join_counts()
        n = step_records(self.max_records)
        if not drain:
            self._poll(n if limit is None else min(limit, n), out)
        if self.dead_letters is not None:
            self.dead_letters.retry()
        size = self.learner.optim_cfg.batch_size
        most = None if drain or self.cfg.mode != "sync" else self.cadence.most  # sync: one round per step
        count = -(-len(self.buffer) // size) if drain else len(self.buffer) // size  # drain: the partial one too
        if most is not None:
            count = min(count, most)
        # one slice each and one cut of the buffer: a binary poll brings ~100,000 examples
        batches = [self.buffer[i : i + size] for i in range(0, count * size, size)]
        del self.buffer[: count * size]
        for group in self._groups(batches):
            self._train(group, out)
        if not batches and self.cfg.mode == "sync":
            self._push_nothing(out)
        if drain and self._inflight is not None:
            self._settle(self._inflight, out)
        out.counts = Counter(self.ingest.counts) - before_counts
        out.join = self.ingest.join_counts() - before_join
        out.pending = self.ingest.pending + len(self.buffer)
        out.version = self.version
        out.exhausted = bool(getattr(self.source, "exhausted", False))
        lag = getattr(self.source, "lag", None)
        if callable(lag):
            out.lag = lag()
        out.step_seconds = time.perf_counter() - started
        self.cadence.observe(out.push_seconds, out.pushes, out.step_seconds - out.push_seconds, len(batches))
        return out

    def _poll(self, budget: int, out: StepResult) -> None:
        """Poll and ingest up to ``budget`` records, ``max_records`` at most a time, while polls bring records and
        the buffer holds less than a push's worth (the cadence's group): so that a push carries the group the
        cadence asks for even when that is more than one poll yields (sync mode: a step is a round; what it
        leaves, beyond ``most`` micro-batches, waits for the next)."""
        want = self.cadence.group * self.learner.optim_cfg.batch_size
        while budget > 0 and len(self.buffer) < want:
            take = min(budget, self.max_records)
            records = self.source.next_batch(take)
            out.records += len(records)
            out.polled_empty |= not records
            budget -= len(records)
            res = self.ingest.process(records)
            if res.dead and self.dead_letters is not None:
                self.dead_letters.write_many(res.dead)
            out.dead.update(d.reason for d in res.dead)
            self.buffer.extend(res.examples)
            if not records:  # an empty poll: caught up (a short one may be a read-ahead's tail)
                return

    def _groups(self, batches: list[list[Example]]) -> list[list[list[Example]]]:
        """A step's micro-batches cut into pushes of about the cadence's group size, evenly (a poll's 125
        micro-batches at 84 are one push of 125, not 84 then 41), never more than the most a push may carry."""
        if not batches:
            return []
        if self.cfg.mode == "sync":
            return [batches]  # a round per step: the step polled about a group's worth, at most ``most``
        most = self.cadence.most
        n = max(-(-len(batches) // most), round(len(batches) / self.cadence.group), 1)
        size = -(-len(batches) // n)
        return [batches[i : i + size] for i in range(0, len(batches), size)]

    def flush(self) -> StepResult:
        """Settle the push in flight, if any: afterwards the servers hold every gradient sent."""
        out = StepResult(self.id, version=self.version)
        if self._inflight is not None:
            self._settle(self._inflight, out)
            out.version = self.version
        return out

    def _train(self, batches: list[list[Example]], out: StepResult) -> None:
        """Compute each batch's gradient and apply it locally; push what the group's steps changed in one call.

        Applying locally means the i-th gradient of a group sees the worker's own i - 1
        earlier steps, so one worker reproduces the single-process loop exactly and
        only other workers' updates make a gradient stale.
        """
        start = time.perf_counter()
        if self._inflight is not None and self._inflight.pending.done():
            self._settle(self._inflight, out)  # free now: the group then starts from one push fresher weights
        prepared, rows = None, None
        if self.row_updates:
            prepared = [self.learner.batch(b) for b in batches]
            rows = np.unique(np.concatenate([p.inputs[0].numpy() for p in prepared]))  # (R,) the rows they touch
            self._pull_stale(rows, out)
        elif self._pull_due():
            self._pull(out)
        before = self.replica.state(rows)
        applied, stats = self.learner.learn_batches(batches, self.clip_norm,
                                                    max(0, LOSS_SAMPLE - len(out.stats.losses)), prepared)
        out.stats.add(stats)
        kept = [b for b, ok in zip(batches, applied, strict=True) if ok]
        out.batch_seconds.append(time.perf_counter() - start)
        if kept:
            after = self.replica.state(rows)  # the update, and the base of the reply's merge
            update = after - before
            if np.isfinite(update).all():
                self._push(update, kept, out, pull=self._pull_due(after_push=True), state=after, rows=rows)
            else:
                kept = self._discard(kept, before, rows, out)
        if not kept and self.cfg.mode == "sync":
            self._push_nothing(out)  # every gradient failed: the round must not wait for this worker
        if not kept and out.stats.skipped and not self.learner.model.sparse \
                and not np.isfinite(self.learner.flat().read()).all():
            self._resync(out)

    def _discard(self, kept: list[list[Example]], before: np.ndarray, rows: np.ndarray | None,
                 out: StepResult) -> list[list[Example]]:
        """The group's steps overflowed (finite gradients can square past float32 in Adagrad's sums): put the
        replica back where the group started and push nothing of it, so the servers never see inf or NaN.
        Its micro-batches count as skipped; their examples are not in the model. Returns no kept batches."""
        log.warning("worker %d: a group of %d micro-batches overflowed the model's state; discarded", self.id,
                    len(kept))
        if rows is None:
            self.learner.flat().write(before.astype(np.float32))
        else:
            self.learner.row_state().write(rows, before.astype(np.float32))
        out.stats.skipped += len(kept)
        return []

    def _push_nothing(self, out: StepResult) -> None:
        """Sync mode: say "nothing this round" (an update of no steps), so the round can close."""
        rows = np.zeros(0, dtype=np.int64) if self.row_updates else None
        self._push(np.zeros_like(self.replica.state(rows)), [], out, pull=True, rows=rows)

    def _resync(self, out: StepResult) -> None:
        """The replica holds non-finite numbers, so every batch fails and nothing is pushed (nor pulled):
        settle what is in flight, then take the servers' state whole with the next group."""
        log.warning("worker %d: replica not finite, pulling the servers' state", self.id)
        if self._inflight is not None:
            self._settle(self._inflight, out)
        self._pulled_once = False

    def _push(self, update: np.ndarray, kept: list[list[Example]], out: StepResult, pull: bool = False,
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
        sent = _Push(pending, kept, base, rows, self.sent, t)
        previous, self._inflight = self._inflight, sent
        if previous is not None:
            self._settle(previous, out)
        if self.cfg.mode == "sync":
            self._settle(sent, out)

    def _settle(self, push: _Push, out: StepResult) -> None:
        """Wait for a push's reply and account for it."""
        if push is self._inflight:
            self._inflight = None
        t = time.perf_counter()
        result, weights = push.pending.result()
        waited = time.perf_counter() - t
        self._waited(out, waited)
        out.push_held_seconds += min(result.held, waited)  # what the reply was still held for, at most
        out.staleness.extend(result.staleness)
        self._behind = max(result.staleness, default=0)
        out.dropped += result.dropped
        out.downweighted += result.downweighted
        self.pushes_since_pull += 1
        if result.lr is not None and result.lr != self.learner.optimizer.param_groups[0]["lr"]:
            self.learner.set_lr(result.lr)
        self.clip_norm = result.clip_norm
        if weights is not None:
            self._load(result.version, weights, out, base=push.base, sent=push.sent, rows=push.rows)
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

    def _pull_due(self, after_push: bool = False) -> bool:
        """Dense models pull with the push that makes one due (sync mode: every push, the round's average);
        sparse ones get their rows in every push's reply and pull the stale ones first (:meth:`_pull_stale`)."""
        if self.row_updates:
            return after_push
        if not after_push:
            return not self._pulled_once
        return (self.cfg.mode == "sync" or self.pushes_since_pull + 1 >= self.cfg.pull_every
                or (self.cfg.mode == "bounded" and self._behind >= self.cfg.max_staleness))

    def _pull_stale(self, rows: np.ndarray, out: StepResult) -> None:
        """A sparse model: pull the rows a group needs that the replica last loaded more than
        ``max_staleness`` versions ago (or never), so that no row a gradient reads is older than that.
        Rows a worker keeps touching come back fresh in every push's reply; this is for the others."""
        stale = self.replica.stale(rows, self.version, self.cfg.max_staleness)
        if len(stale) and self._inflight is not None:
            self._settle(self._inflight, out)  # so that the servers' rows include every own step
            stale = self.replica.stale(rows, self.version, self.cfg.max_staleness)  # its reply refreshed some
        if not len(stale):
            return
        t = time.perf_counter()
        version, state = self.ps.pull_rows(stale)
        self._waited(out, time.perf_counter() - t)
        self._load(version, state, out, rows=stale)

    def _pull(self, out: StepResult) -> None:
        """A dense model: take the servers' flat state whole."""
        t = time.perf_counter()
        version, state = self.ps.pull()
        self._waited(out, time.perf_counter() - t)
        self._load(version, state, out)

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

    def _load(self, version: int, update: np.ndarray, out: StepResult, base: np.ndarray | None = None,
              sent: int | None = None, rows: np.ndarray | None = None) -> None:
        """Take the servers' weights (which include ``sent`` own gradients, default all); with ``base``
        (the replica's state when the push went out) as a delta on top of the own steps taken since.
        ``rows``: a sparse model's row state on those rows."""
        inflight = self._inflight
        if rows is not None:
            theirs = None if inflight is None or inflight.base is None or inflight.rows is None else \
                (inflight.base, inflight.rows)
            drift = self.replica.load_row_state(rows, update, base, version, theirs)
        else:
            drift = self.replica.load_flat(update, base, None if inflight is None else inflight.base)
        if self._pulled_once:
            out.replica_drift = drift**0.5
        self._pulled_once = True
        self.version = version
        self.pushes_since_pull = 0
        self.sent_at_pull = self.sent if sent is None else sent

    # -- checkpoints ----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything this worker must resume from, consistent with what it pushed so far."""
        assert self._inflight is None, "flush() before a snapshot: the servers must hold what it describes"
        letters: list[DeadLetter] = []
        if self.dead_letters is not None:  # the positions move past bad records: keep what the DLQ lacks
            self.dead_letters.flush(SINK_FLUSH_SECONDS)
            letters = self.dead_letters.unacked()
        return {
            "ingest": self.ingest.snapshot(),
            "positions": self.source.positions(),
            "buffer": list(self.buffer),
            "applied": dict(self.applied),
            "dead_letters": letters,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.ingest.restore(state["ingest"])
        self.source.seek(state["positions"])
        self.buffer = list(state["buffer"])
        self.applied = Counter(state["applied"])
        if self.dead_letters is not None and state.get("dead_letters"):
            self.dead_letters.write_many(state["dead_letters"])  # at least once: some may be in the DLQ
        self._pulled_once = False
        self._inflight = None
        self.replica.forget()
