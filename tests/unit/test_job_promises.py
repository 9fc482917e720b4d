"""The driver's record promises under ``--max-events``: a worker whose partitions ran dry must not starve the
others (without Ray: the job's send path with stand-in worker handles)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from streamlearn.config import JobConfig, StopConfig
from streamlearn.job import Job, Totals
from streamlearn.ps import PSConfig
from streamlearn.worker import StepResult


class _Handle:
    """A worker actor handle whose ``step.remote`` returns a fresh reference and records the limit."""

    refs = itertools.count()

    def __init__(self) -> None:
        self.limits: list[int | None] = []
        self.step = self

    def remote(self, drain: bool, limit: int | None) -> int:
        self.limits.append(limit)
        return next(self.refs)


def _driver(mode: str, records: int, dry: set[int]) -> tuple[Job, list[_Handle]]:
    job = Job.__new__(Job)
    job.cfg = JobConfig(workers=2, partitions=2, max_records=500, ps=PSConfig(mode=mode),
                        stop=StopConfig(max_events=10_000))
    job.totals = Totals()
    job.totals.records = records
    job._limits, job._parked, job._dry, job.replayed = {}, set(), set(dry), 0
    handles = [_Handle(), _Handle()]
    job.workers = handles  # type: ignore[assignment]
    return job, handles


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_dry_worker_leaves_the_rest_to_the_others(mode: str) -> None:
    job, (a, b) = _driver(mode, records=9_700, dry={1})
    inflight: dict[Any, int] = {}
    job._send(inflight, 1)  # the dry worker's step came back first: it would claim all 300 left
    job._send(inflight, 0)
    assert a.limits == [300]
    assert b.limits == ([0] if mode == "sync" else [])  # sync: a step that only answers its round
    assert job._parked == ({1} if mode == "async" else set())


def test_when_every_worker_is_dry_each_is_promised_again() -> None:
    job, (a, b) = _driver("sync", records=9_700, dry={0, 1})  # new records may come to either
    inflight: dict[Any, int] = {}
    job._send(inflight, 1)
    job._send(inflight, 0)
    assert (b.limits, a.limits) == ([300], [0])
    assert sum(job._limits.values()) == 300  # never more than max_events in all


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
    job, _ = _driver("sync", records=9_700, dry=dry)
    world = [_Partitions(n, poll=50, per_round=20) for n in left]
    inflight: dict[Any, int] = {}
    for w in (0, 1):
        job._send(inflight, w)
    rounds = 0
    while job.fresh_records < 10_000 and rounds < 50:
        rounds += 1
        results = [(ref, w, world[w].step(w, job._limits[ref]))
                   for ref, w in sorted(inflight.items(), key=lambda i: i[1] != first)]
        for ref, w, r in results:
            inflight.pop(ref)
            job.totals.records += r.records
            job._mark_dry(w, r)
            job._send(inflight, w)
    assert job.fresh_records == 10_000 and [p.records for p in world] == [0, 0]
    assert rounds <= 20  # 300 records at 20 a round, a few rounds spent on empty polls
