"""The driver loop: one step in flight per worker (two outside sync mode), each result folded into the
totals, the lineage, the record budget and the metrics; between results, the guard's look, checkpoints when
due and progress lines; at the end a drain and a final checkpoint. Never ``ray.get`` in a loop: the fleet
reports whichever step finished first."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Hashable
from typing import TypeVar

from streamlearn.config import JobConfig
from streamlearn.job import health
from streamlearn.job.budget import RecordBudget
from streamlearn.job.checkpointer import Checkpointer
from streamlearn.job.fleet import ActorLost, Fleet
from streamlearn.job.guard import ShardGuard
from streamlearn.job.stop import Stop
from streamlearn.job.summary import Totals, progress_line
from streamlearn.metrics import Metrics
from streamlearn.worker import StepResult

T = TypeVar("T")
FINAL_RECOVERIES = 3  # actors lost while the job ends (drain, final reads) or while recovering: recover this often
GUARD_EVERY = 0.5  # seconds between the guard's looks at the weight norm
PROGRESS_EVERY = 2.0


class Hooks:
    """Named moments of a job, for tests and benchmarks to act at (each a no-op here)."""

    def ready(self) -> None:
        """Every actor is built."""

    def folded(self, r: StepResult) -> None:
        """A step's result was folded in."""

    def checkpointed(self) -> None:
        """A checkpoint was written."""

    def finishing(self) -> None:
        """The job drained and wrote its final checkpoint; the final reads (positions, weights) come next."""


class StepLoop:
    def __init__(self, cfg: JobConfig, fleet: Fleet, checkpointer: Checkpointer, guard: ShardGuard, stop: Stop,
                 metrics: Metrics, hooks: Hooks, progress: Callable[[str], None] | None = None) -> None:
        self.cfg, self.fleet, self.checkpointer, self.guard, self.stop = cfg, fleet, checkpointer, guard, stop
        self.metrics, self.hooks, self.progress = metrics, hooks, progress
        self.sync = cfg.ps.mode == "sync"
        self.budget = RecordBudget(cfg.stop.max_events, cfg.max_records, fleet.workers, self.sync)
        self.totals = Totals()
        self.lineage: Counter[tuple[int, str]] = Counter()  # (partition, polarity) -> examples in the model
        self.exhausted: set[int] = set()  # embedded workers at the end of their stream
        self.inflight: dict[Hashable, int] = {}  # step -> worker
        self._norm, self._looked, self._reported = 0.0, 0.0, 0.0
        self._saved_at, self._saved_updates = 0.0, 0
        self.warned: set[str] = set()  # the health warnings already said while running (each once)

    def run(self, finish: Callable[[], T]) -> T:
        """Step until a stop condition, drain, then ``finish`` (the final reads). An actor lost on the way is
        recovered from the newest checkpoint, also while the job ends (a parked worker has no step in flight
        to report it; the final reads may meet an actor that restarts); stepping goes on if the recovery
        moved the sources back behind where the job stopped."""
        self._issue()
        ending = 0
        while True:
            try:
                self._steps()
                self._drain()
                return finish()
            except ActorLost as exc:
                ending += 1
                if ending > FINAL_RECOVERIES:
                    raise
                self.stop.resume(self.budget, self._recover(exc))

    def _steps(self) -> None:
        self._saved_at, self._saved_updates = time.monotonic(), self.totals.updates
        while self.inflight:
            try:
                self._next()
            except ActorLost as exc:
                self._recover(exc)

    def _next(self) -> None:
        """Fold the next step that finished and queue its worker's next, then what is due between steps."""
        for step in self.fleet.wait(self.inflight, GUARD_EVERY):
            w = self.inflight.pop(step)
            r = self.fleet.result(step)
            self.fold(r)
            if r.records:
                self.stop.arrived()
            if not self._stopping():
                for parked in sorted(self.budget.parked - {w}):  # a step came back, maybe short: promise again
                    self._send(parked)
                self._send(w)
            elif self.sync:  # don't let the others' rounds wait for a worker that stopped
                self.fleet.set_workers(max(1, len(self.inflight)))
        now = time.monotonic()
        if now - self._looked > GUARD_EVERY and not self.stop.requested:
            self._looked = now
            self._norm = self.guard.look(self.totals)
        self.metrics.weight_norm.set(self._norm)
        self.metrics.tick(self.cfg.metrics.history, self.cfg.metrics.history_every_seconds)
        if self._checkpoint_due(now) and self.inflight:
            self._checkpoint()
        if self.progress and now - self._reported > PROGRESS_EVERY:
            self._reported = now
            self.progress(progress_line(self.totals, now - self.stop.started))
        self._warn()
        self._stopping()

    def _warn(self) -> None:
        """Say each health warning once, as soon as its share is clear (the summary repeats it at the end)."""
        if len(self.warned) == 2:
            return
        for kind, text in health.due(self.totals, self.cfg, final=False).items():
            if kind not in self.warned:
                self.warned.add(kind)
                if self.progress:
                    self.progress(f"WARNING: {text}")

    def _stopping(self) -> bool:
        return self.stop.check(self.budget, len(self.exhausted), self.fleet.workers)

    def fold(self, r: StepResult) -> None:
        if r.exhausted and r.records == 0:
            self.exhausted.add(r.worker)
        self.metrics.observe(r)
        self.totals.add(r)
        self.lineage.update(r.applied)
        self.budget.took(r)
        self.hooks.folded(r)

    def _checkpoint_due(self, now: float) -> bool:
        ck = self.cfg.checkpoint
        return bool(ck.dir) and bool((ck.every_seconds and now - self._saved_at >= ck.every_seconds) or
                                     (ck.every_updates and self.totals.updates - self._saved_updates
                                      >= ck.every_updates))

    def _checkpoint(self) -> None:
        """Pause, save, then queue again the steps the pause waited for."""
        waiting = list(self.inflight.values())
        self.checkpointer.pause(self.inflight, self.fold)
        self._save()
        if self.sync:
            self.fleet.set_workers(self.fleet.workers)
        for w in waiting:
            self._send(w)
        self._saved_at, self._saved_updates = time.monotonic(), self.totals.updates

    def _save(self) -> None:
        self.checkpointer.save(self.lineage)
        self.budget.saved()  # the workers are paused: the saved positions include every record so far
        self.metrics.last_checkpoint = time.time()
        self.hooks.checkpointed()

    def _drain(self) -> None:
        """Learn the partial micro-batches, then a final checkpoint."""
        self.fleet.set_workers(self.fleet.workers)
        drains = [self.fleet.step(w, None, drain=True) for w in range(self.fleet.workers)]
        for step in drains:
            self.fold(self.fleet.result(step))
        if self.cfg.checkpoint.dir:
            self._save()

    def _issue(self) -> None:
        """Queue steps on every worker: two each outside sync mode, so a worker never idles while the driver
        folds its last result (the actor runs them in order); one in sync mode, where a round counts them."""
        for _ in range(1 if self.sync else 2):
            for w in range(self.fleet.workers):
                self._send(w)

    def _send(self, w: int) -> None:
        send, limit = self.budget.promise(w, self.inflight)
        if send:
            step = self.fleet.step(w, limit)
            self.inflight[step] = w
            self.budget.queued(step, limit)

    def _recover(self, exc: ActorLost) -> bool:
        """Restore every actor from the newest checkpoint and queue steps again; returns whether the sources
        moved back behind what the job had counted."""
        lost = list(self.inflight)
        self.inflight.clear()
        self.lineage = self.checkpointer.recover(lost, exc)
        self.totals.restart(self.checkpointer.restored_waiting)
        self.guard.restored()
        self.exhausted.clear()
        fresh = self.budget.fresh
        self.budget.rewound()
        self.fleet.set_workers(self.fleet.workers)
        self._issue()
        return self.budget.fresh < fresh
