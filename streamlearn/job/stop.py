"""When a job stops: ``--max-events``, ``--max-seconds``, ``--until-idle``, the end of the embedded stream, or
a request (a signal)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from streamlearn.config import StopConfig
from streamlearn.job.budget import RecordBudget


class Stop:
    def __init__(self, cfg: StopConfig, embedded: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.embedded, self.clock = cfg, embedded, clock
        self.reason = ""
        self._event = threading.Event()
        self.started = self.last_records = clock()

    def start(self) -> None:
        self.started = self.last_records = self.clock()

    def request(self, reason: str) -> None:
        """Stop at the next chance (first reason wins); safe from a signal handler or another thread."""
        self.reason = self.reason or reason
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def arrived(self) -> None:
        """A step brought records: the idle clock starts again."""
        self.last_records = self.clock()

    def check(self, budget: RecordBudget, exhausted: int, workers: int) -> bool:
        """Whether the job stops (``exhausted``: embedded workers at the end of their stream)."""
        s, now = self.cfg, self.clock()
        if budget.spent:
            self.request("max_events")
        elif s.max_seconds is not None and now - self.started >= s.max_seconds:
            self.request("max_seconds")
        elif s.until_idle is not None and now - self.last_records >= s.until_idle:
            self.request("until_idle")
        elif self.embedded and exhausted >= workers:
            self.request("end_of_stream")
        return self.requested

    def resume(self, budget: RecordBudget, rewound: bool) -> None:
        """A recovery moved the sources back after the job stopped: when it stopped for where the stream
        stood (max_events no longer spent, or the end of a stream it must now read again), go on stepping."""
        if (self.reason == "max_events" and not budget.spent) or (self.reason == "end_of_stream" and rewound):
            self.reason = ""
            self._event.clear()
