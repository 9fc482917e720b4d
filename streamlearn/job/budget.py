"""The record budget of ``--max-events``: how many records each queued step may poll, so the job consumes
exactly that many records of the stream, each counted once even when a recovery replays it."""

from __future__ import annotations

from collections.abc import Collection, Hashable

from streamlearn.worker import StepResult, step_records


class RecordBudget:
    """Promises records to the steps the driver queues, and counts what comes back.

    With ``max_events`` a step polls at most the records not yet promised to the
    steps already queued; when none are left the worker waits (parked) for those
    steps to come back, possibly short; in sync mode it steps with a limit of 0
    instead, which still answers its round. A dry worker (its last poll came
    back empty) is promised nothing while another is not dry: else, steps coming
    back together (sync rounds), it could claim the rest again and again and
    starve the worker whose partitions hold it. When every worker is dry, all
    are promised again, afresh: the first to come back claims it all, and if its
    poll comes back empty again it is the only one dry, so the next promise goes
    to another. Without ``max_events`` every step polls freely (limit None).
    """

    def __init__(self, max_events: int | None, max_records: int, workers: int, sync: bool) -> None:
        self.max_events, self.per_step, self.workers, self.sync = max_events, step_records(max_records), workers, sync
        self.consumed = 0  # records the steps brought, replays included
        self.replayed = 0  # of those, consumed again after a recovery moved the sources back
        self.at_save = 0  # records counted once, at the last checkpoint (the positions it saved include them)
        self.parked: set[int] = set()  # workers with no step queued: the budget is all promised
        self.dry: set[int] = set()  # workers whose last poll came back empty (none since brought records)
        self._promised: dict[Hashable, int] = {}  # queued step -> the most records it may poll

    @property
    def fresh(self) -> int:
        """Records consumed, each once: those replayed after a recovery are not counted again."""
        return self.consumed - self.replayed

    @property
    def spent(self) -> bool:
        return self.max_events is not None and self.fresh >= self.max_events

    def promise(self, worker: int, queued: Collection[Hashable]) -> tuple[bool, int | None]:
        """(whether to queue a step on ``worker`` now, the most records it may poll); ``queued``: the steps
        in flight. Not queued means parked: :attr:`parked` lists the workers to offer again later."""
        if self.max_events is None:
            return True, None
        self._promised = {s: n for s, n in self._promised.items() if s in queued}
        left = self.max_events - self.fresh - sum(self._promised.values())
        limit = max(0, min(self.per_step, left))
        if len(self.dry) >= self.workers:
            self.dry.clear()
        if worker in self.dry:
            limit = 0
        if limit == 0 and not self.sync:
            self.parked.add(worker)
            return False, None
        self.parked.discard(worker)
        return True, limit

    def queued(self, step: Hashable, limit: int | None) -> None:
        """``step`` went out with ``limit`` (from :meth:`promise`)."""
        if limit is not None:
            self._promised[step] = limit

    def took(self, r: StepResult) -> None:
        """A step came back. Its worker is dry once a poll came back empty, until one brings records; a step
        that did not poll (limit 0, or in sync mode its buffer held a round) says nothing either way."""
        self.consumed += r.records
        if r.records:
            self.dry.discard(r.worker)
        elif r.polled_empty:
            self.dry.add(r.worker)

    def saved(self) -> None:
        """A checkpoint was taken with the workers paused: its positions include every record so far."""
        self.at_save = self.fresh

    def rewound(self) -> None:
        """A recovery moved the sources back to the last checkpoint: what was consumed since comes again."""
        self.replayed = self.consumed - self.at_save
        self._promised.clear()
        self.parked.clear()
        self.dry.clear()
