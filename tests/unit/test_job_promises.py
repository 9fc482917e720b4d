"""The driver's record promises under ``--max-events``: a worker whose partitions ran dry must not starve the
others (without Ray: the job's send path with stand-in worker handles)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from streamlearn.config import JobConfig, StopConfig
from streamlearn.job import Job, Totals
from streamlearn.paramserver import PSConfig


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
