"""The record budget under ``--max-events``: a worker whose partitions ran dry must not starve the others, and
a replayed record counts once."""

from __future__ import annotations

import itertools

import pytest

from streamlearn.job.budget import RecordBudget
from streamlearn.worker import StepResult


class _Queue:
    """The driver's side: steps queued per worker, each with the limit the budget promised."""

    def __init__(self, budget: RecordBudget) -> None:
        self.budget, self.inflight, self.limits = budget, {}, {0: [], 1: []}  # type: ignore[var-annotated]
        self.ids = itertools.count()

    def send(self, w: int) -> None:
        ok, limit = self.budget.promise(w, self.inflight)
        if ok:
            step = next(self.ids)
            self.inflight[step] = w
            self.budget.queued(step, limit)
            self.limits[w].append(limit)


def _budget(mode: str, records: int, dry: set[int]) -> RecordBudget:
    budget = RecordBudget(max_events=10_000, max_records=500, workers=2, sync=mode == "sync")
    budget.consumed = records
    budget.dry = set(dry)
    return budget


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_dry_worker_leaves_the_rest_to_the_others(mode: str) -> None:
    q = _Queue(_budget(mode, records=9_700, dry={1}))
    q.send(1)  # the dry worker's step came back first: it would claim all 300 left
    q.send(0)
    assert q.limits[0] == [300]
    assert q.limits[1] == ([0] if mode == "sync" else [])  # sync: a step that only answers its round
    assert q.budget.parked == ({1} if mode == "async" else set())


def test_when_every_worker_is_dry_each_is_promised_again() -> None:
    q = _Queue(_budget("sync", records=9_700, dry={0, 1}))  # new records may come to either
    q.send(1)
    q.send(0)
    assert (q.limits[1], q.limits[0]) == ([300], [0])


def test_without_max_events_every_step_polls_freely() -> None:
    budget = RecordBudget(max_events=None, max_records=500, workers=2, sync=False)
    assert budget.promise(0, {}) == (True, None) and not budget.spent


def test_a_replayed_record_counts_once() -> None:
    budget = RecordBudget(max_events=1000, max_records=100, workers=1, sync=False)
    budget.took(StepResult(0, records=400))
    budget.saved()
    budget.took(StepResult(0, records=300))
    budget.rewound()  # the sources are back at the checkpoint: the 300 come again
    assert (budget.fresh, budget.replayed) == (400, 300)
    budget.took(StepResult(0, records=500))  # the 300 again, then 200 new
    assert (budget.fresh, budget.spent) == (900, False)
    assert budget.promise(0, {}) == (True, 100)  # what the stream's first 1000 records still hold


class _Partitions:
    """A stand-in worker in sync mode: ``records`` left in its partitions, a poll brings up to ``poll`` of them,
    a round learns ``per_round``. As ``Worker.step``: with a round's worth buffered it does not poll; a step
    with a limit of 0 does not poll."""

    def __init__(self, records: int, poll: int, per_round: int) -> None:
        self.records, self.poll, self.per_round, self.buffered = records, poll, per_round, 0

    def step(self, worker: int, limit: int) -> StepResult:
        out = StepResult(worker)
        if self.buffered < self.per_round and limit > 0:
            out.records = min(limit, self.records, self.poll)
            out.polled_empty = out.records == 0
            self.records -= out.records
            self.buffered += out.records
        self.buffered -= min(self.buffered, self.per_round)  # the round learns what it can
        return out


@pytest.mark.parametrize("dry", [set(), {0, 1}])  # {0, 1}: both had caught up, then the last records came
@pytest.mark.parametrize("first", [0, 1])
@pytest.mark.parametrize("left", [(0, 300), (150, 150), (300, 0)])
def test_sync_rounds_reach_every_record_when_buffers_hold_several_rounds(left: tuple[int, int], first: int,
                                                                         dry: set[int]) -> None:
    """The last 300 records of --max-events lie in either worker's partitions or both, and a poll brings 2.5
    rounds' worth, so most steps poll nothing. A step that did not poll must not mark its worker dry: when it
    did, both workers ended up dry with records left, each promised nothing in turn, and no round moved
    (the driver folds a round's steps one at a time, in the order Ray returns them: ``first``'s first). And
    when every worker is dry, the one whose step comes back first must not claim the rest round after round
    while the records are in another's partitions."""
    budget = _budget("sync", records=9_700, dry=dry)
    promised: dict[int, int] = {}
    q = _Queue(budget)
    world = [_Partitions(n, poll=50, per_round=20) for n in left]
    for w in (0, 1):
        q.send(w)
        promised[max(q.inflight)] = q.limits[w][-1]  # type: ignore[assignment]
    rounds = 0
    while budget.fresh < 10_000 and rounds < 50:
        rounds += 1
        results = [(step, w, world[w].step(w, promised[step]))
                   for step, w in sorted(q.inflight.items(), key=lambda i: i[1] != first)]
        for step, w, r in results:
            q.inflight.pop(step)
            budget.took(r)
            q.send(w)
            promised[max(q.inflight)] = q.limits[w][-1]  # type: ignore[assignment]
    assert budget.fresh == 10_000 and [p.records for p in world] == [0, 0]
    assert rounds <= 20  # 300 records at 20 a round, a few rounds spent on empty polls
