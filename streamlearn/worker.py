"""A worker: consume its partitions, join, micro-batch, compute gradients, push, pull.

Plain Python: the Ray actor in :mod:`streamlearn.actors` wraps it, and the
parameter servers are reached through a :class:`~streamlearn.ps.client.ParamClient`, so the worker
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
credits only settled pushes (this bookkeeping: :class:`~streamlearn.ps.exchange.Exchange`). A reply's weights are merged
as a delta, ``replica += server - replica_at_push`` (accumulators too), so the
worker keeps its own newer local steps and one worker still reproduces the
single-process loop (the merges: :mod:`streamlearn.ps.replica`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Protocol

import numpy as np

from streamlearn.cadence import PushCadence
from streamlearn.events import Example
from streamlearn.ingest import DeadLetter, Ingest
from streamlearn.learner import BatchStats, Learner
from streamlearn.ps.client import ParamClient
from streamlearn.ps.config import PSConfig
from streamlearn.ps.exchange import Exchange
from streamlearn.ps.replica import Replica
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


class DeadLetters(Protocol):
    """Where a worker's dead letters go (:class:`~streamlearn.kafka.DeadLetterSink`): a write never
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
    pending: int = 0  # events waiting in the join and examples waiting for a micro-batch
    waiting: int = 0  # of those, the events in the join
    exhausted: bool = False
    lag: dict[TopicPartition, int] = field(default_factory=dict)


STEP_POLLS = 8  # a step may poll this many times max_records records to gather a push's worth


def step_records(max_records: int) -> int:
    """The most records one step polls."""
    return max_records * STEP_POLLS


class Worker:
    def __init__(self, worker: int, learner: Learner, ingest: Ingest, source: EventSource, ps: ParamClient,
                 ps_cfg: PSConfig, dead_letters: DeadLetters | None = None,
                 max_records: int = 2000) -> None:
        self.id = worker
        self.learner, self.ingest, self.source, self.cfg = learner, ingest, source, ps_cfg
        self.dead_letters = dead_letters
        self.max_records = max_records
        self.buffer: list[Example] = []
        self.exchange = Exchange(worker, learner, ps, ps_cfg)  # pushes, pulls, replies, lineage
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
            self.exchange.push_nothing(out)
        if drain:
            self.exchange.flush(out)
        out.counts = Counter(self.ingest.counts) - before_counts
        out.join = self.ingest.join_counts() - before_join
        self._pending(out)
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
        self.exchange.flush(out)
        out.version = self.version
        self._pending(out)
        return out

    def _pending(self, out: StepResult) -> None:
        out.waiting = self.ingest.pending
        out.pending = out.waiting + len(self.buffer)

    def _train(self, batches: list[list[Example]], out: StepResult) -> None:
        """Compute each batch's gradient and apply it locally; push what the group's steps changed in one call.

        Applying locally means the i-th gradient of a group sees the worker's own i - 1
        earlier steps, so one worker reproduces the single-process loop exactly and
        only other workers' updates make a gradient stale.
        """
        start = time.perf_counter()
        ex = self.exchange
        prepared, rows = None, None
        if ex.row_updates:
            prepared = [self.learner.batch(b) for b in batches]
            rows = np.unique(np.concatenate([p.inputs[0] for p in prepared]))  # (R,) the rows they touch
        ex.before_group(rows, out)
        before = ex.replica.state(rows)
        applied, stats = self.learner.learn_batches(batches, ex.clip_norm,
                                                    max(0, LOSS_SAMPLE - len(out.stats.losses)), prepared)
        out.stats.add(stats)
        kept = [b for b, ok in zip(batches, applied, strict=True) if ok]
        out.batch_seconds.append(time.perf_counter() - start)
        if kept:
            after = ex.replica.state(rows)  # the update, and the base of the reply's merge
            with np.errstate(invalid="ignore"):  # inf - inf: a non-finite update, caught just below
                update = after - before
            if np.isfinite(update).all():
                ex.push(update, kept, out, pull=ex.pull_due(after_push=True), state=after, rows=rows)
            else:
                kept = self._discard(kept, before, rows, out)
        if not kept and self.cfg.mode == "sync":
            ex.push_nothing(out)  # every gradient failed: the round must not wait for this worker
        if not kept and out.stats.skipped and not self.learner.model.sparse \
                and not np.isfinite(self.learner.flat().read()).all():
            ex.resync(out)

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

    # -- what the exchange knows, for the step's result and tests --------------

    @property
    def version(self) -> int:
        """The servers' version the replica was last loaded at."""
        return self.exchange.version

    @property
    def applied(self) -> Counter[tuple[int, str]]:
        """Lineage: examples in the model, per (partition, polarity)."""
        return self.exchange.applied

    @applied.setter
    def applied(self, value: Counter[tuple[int, str]]) -> None:
        self.exchange.applied = value

    @property
    def replica(self) -> Replica:
        return self.exchange.replica

    @property
    def clip_norm(self) -> float | None:
        return self.exchange.clip_norm

    @property
    def local_since_pull(self) -> int:
        return self.exchange.local_since_pull

    # -- checkpoints ----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything this worker must resume from, consistent with what it pushed so far."""
        assert self.exchange.inflight is None, "flush() before a snapshot: the servers must hold what it describes"
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
        self.exchange.forget()
