"""KafkaSource's bookkeeping over the client interface, on an in-memory reader (no broker): positions move
only past returned records, seeks drop what was read ahead, an outage keeps positions and reads again."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pytest

from streamlearn.kafka import KafkaSettings, KafkaSetupError, KafkaSource, SourceConfig
from streamlearn.kafka import source as source_module
from streamlearn.kafka.client import KafkaUnavailable, Pair, ReaderConfig
from streamlearn.source import Record

SETTINGS = KafkaSettings("127.0.0.1:9", predictions_topic="p", feedback_topic="f", dlq_topic="d")
KINDS = {"p": "prediction", "f": "feedback"}


class MemoryReader:
    """The Reader interface over in-memory logs ``(topic, partition) -> values`` (offset = index + start)."""

    def __init__(self, logs: dict[Pair, list[bytes]], start: int = 0, partitions: int = 2) -> None:
        self.logs, self.start, self.n_partitions = logs, start, partitions
        self.next: dict[Pair, int] = {}
        self.down = False
        self.closed = False
        self.assigned: list[dict[Pair, int]] = []
        self.committed: dict[Pair, int] = {}

    def _check(self) -> None:
        if self.down:
            raise KafkaUnavailable("poll failed: broker down")

    def partitions(self, topic: str, timeout_s: float) -> list[int] | None:
        self._check()
        return list(range(self.n_partitions)) if topic in KINDS else None

    def assign(self, positions: Mapping[Pair, int]) -> None:
        self.next = dict(positions)
        self.assigned.append(dict(positions))

    def read(self, max_records: int, timeout_s: float) -> list[list[Record]]:
        self._check()
        runs = []
        for (t, p), off in sorted(self.next.items()):
            values = self.logs.get((t, p), [])[off - self.start:][:max_records]
            if values:
                runs.append([Record(KINDS[t], t, p, off + i, None, v) for i, v in enumerate(values)])  # type: ignore[arg-type]
                self.next[(t, p)] = off + len(values)
                max_records -= len(values)
            if max_records <= 0:
                break
        return runs

    def watermarks(self, pairs: Sequence[Pair], timeout_s: float) -> dict[Pair, tuple[int, int]]:
        self._check()
        return {tp: (self.start, self.start + len(self.logs.get(tp, []))) for tp in pairs}

    def known_ends(self, pairs: Sequence[Pair]) -> dict[Pair, int]:
        return {}

    def commit(self, positions: Mapping[Pair, int], timeout_s: float) -> None:
        self._check()
        self.committed.update(positions)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def logs() -> dict[Pair, list[bytes]]:
    return {(t, p): [b"%s%d-%d" % (t.encode(), p, i) for i in range(10)] for t in ("p", "f") for p in (0, 1)}


def _source(monkeypatch: pytest.MonkeyPatch, reader: MemoryReader, partitions: list[int],
            positions: dict[Pair, int] | None = None, **cfg: object) -> KafkaSource:
    def make(settings: KafkaSettings, config: ReaderConfig) -> MemoryReader:
        return reader

    monkeypatch.setattr(source_module, "reader", make)
    return KafkaSource(SETTINGS, partitions, positions, SourceConfig(**cfg))  # type: ignore[arg-type]


def test_positions_move_only_past_returned_records(monkeypatch: pytest.MonkeyPatch, logs) -> None:
    reader = MemoryReader(logs, start=5)
    src = _source(monkeypatch, reader, [0, 1])
    assert src.positions() == {tp: 5 for tp in logs}  # "earliest" resolved at once
    first = src.next_batch(7)
    assert len(first) == 7
    assert sum(src.positions().values()) == 4 * 5 + 7  # the rest of what was read waits in the source
    rest = []
    while batch := src.next_batch(6):
        rest += batch
    assert len(first) + len(rest) == 40
    assert src.positions() == {tp: 15 for tp in logs}
    for tp in logs:  # offset order per pair, every record once
        assert [r.offset for r in first + rest if (r.topic, r.partition) == tp] == list(range(5, 15))
    assert src.lag() == dict.fromkeys(logs, 0)
    assert src.commit_for_monitoring() and reader.committed == src.positions()
    src.close()
    assert reader.closed


def test_seek_drops_what_was_read_ahead_and_ignores_foreign_pairs(monkeypatch: pytest.MonkeyPatch, logs) -> None:
    reader = MemoryReader(logs)
    src = _source(monkeypatch, reader, [1], positions={("p", 1): 3, ("p", 0): 8, ("other", 1): 2})
    assert src.positions() == {("p", 1): 3, ("f", 1): 0}
    src.next_batch(2)
    src.seek({("f", 1): 9})
    got = src.next_batch(100)
    assert sorted((r.topic, r.offset) for r in got) == [("f", 9), *(("p", i) for i in range(10))]
    assert reader.assigned[-1] == {("p", 1): 0, ("f", 1): 9}
    with pytest.raises(ValueError, match="negative offset"):
        src.seek({("p", 1): -1})


def test_an_outage_keeps_positions_and_reads_again(monkeypatch: pytest.MonkeyPatch, logs,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="streamlearn.kafka")
    reader = MemoryReader(logs)
    src = _source(monkeypatch, reader, [0], backoff_s=0.001, max_backoff_s=0.001)
    got = src.next_batch(3)
    held = src.positions()
    reader.down = True
    assert src.next_batch(100) == []  # what was read ahead is dropped: read again after the outage
    assert src.positions() == held
    assert reader.assigned[-1] == held  # the client is put back where the source stands
    reader.down = False
    while batch := src.next_batch(100):
        got += batch
    assert src.positions() == {("p", 0): 10, ("f", 0): 10}
    messages = [r.getMessage() for r in caplog.records]
    assert any("unavailable" in m for m in messages) and any("reachable again" in m for m in messages)


def test_missing_topics_and_partitions_are_setup_errors(monkeypatch: pytest.MonkeyPatch, logs) -> None:
    with pytest.raises(KafkaSetupError, match="partitions \\[2\\] do not exist"):
        _source(monkeypatch, MemoryReader(logs, partitions=2), [1, 2])
    with pytest.raises(ValueError, match="distinct"):
        _source(monkeypatch, MemoryReader(logs), [1, 1])
