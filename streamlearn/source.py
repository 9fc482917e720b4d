"""Event sources: where raw records come from.

The contract (see :class:`EventSource`): ``next_batch`` returns the next
records of the source's partitions, in offset order per partition, possibly
none; ``positions`` says the next offset to read per (topic, partition),
which is what a checkpoint stores; ``seek`` restarts from such positions;
``close`` releases it. The Kafka implementation lives in
:mod:`streamlearn.kafka`, the only package that imports a Kafka client.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

from streamlearn.codec import Kind, encode_binary, encode_json
from streamlearn.events import Event, Prediction

TopicPartition = tuple[str, int]


class Record(NamedTuple):
    """One raw record as read from a partition (a named tuple: immutable, and cheap to build per record)."""

    kind: Kind  # which stream: prediction or feedback
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class EventSource(Protocol):
    def next_batch(self, max_records: int) -> list[Record]: ...

    def positions(self) -> dict[TopicPartition, int]: ...

    def seek(self, positions: dict[TopicPartition, int]) -> None: ...

    def close(self) -> None: ...


def partition_of(ident: str, partitions: int) -> int:
    """Stable partition for an id (both topics use the same one, so pairs meet)."""
    return zlib.crc32(ident.encode("utf-8")) % partitions


class MemorySource:
    """The embedded source: events (e.g. from the simulator) become records in memory.

    Events are spread over ``partitions`` co-partitioned pairs by id, like a
    keyed Kafka producer would. ``partitions_owned`` selects a worker's share.
    Records are encoded with the real codec so the same decode path runs.
    """

    def __init__(
        self,
        events: Iterable[Event] | Callable[[], Iterable[Event]],
        partitions: int = 1,
        partitions_owned: Sequence[int] | None = None,
        codec: str = "json",
        predictions_topic: str = "predictions",
        feedback_topic: str = "feedback",
    ) -> None:
        # a factory can replay the stream from the start, so seek() can also go back
        self._factory = events if callable(events) else None
        self._events = iter(events() if callable(events) else events)
        self.partitions = partitions
        self.owned = set(range(partitions) if partitions_owned is None else partitions_owned)
        self.codec = codec
        self.topics = {"prediction": predictions_topic, "feedback": feedback_topic}
        self._next: dict[TopicPartition, int] = {
            (t, p): 0 for t in self.topics.values() for p in sorted(self.owned)
        }
        self._skip: dict[TopicPartition, int] = {}
        self.exhausted = False

    def next_batch(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        while len(out) < max_records:
            ev = next(self._events, None)
            if ev is None:
                self.exhausted = True
                break
            kind = "prediction" if isinstance(ev, Prediction) else "feedback"
            p = partition_of(ev.id, self.partitions)
            if p not in self.owned:
                continue
            tp = (self.topics[kind], p)
            offset = self._next[tp]
            self._next[tp] = offset + 1
            if offset < self._skip.get(tp, 0):
                continue  # before a seek position: already in the model
            value = encode_json(ev) if self.codec == "json" else encode_binary([ev])
            out.append(Record(kind, tp[0], p, offset, ev.id.encode(), value))  # type: ignore[arg-type]
        return out

    def positions(self) -> dict[TopicPartition, int]:
        return {tp: max(n, self._skip.get(tp, 0)) for tp, n in self._next.items()}

    def seek(self, positions: dict[TopicPartition, int]) -> None:
        """Resume at these offsets: replay from the start (if built from a factory) and skip what came before."""
        if self._factory is not None:
            self._events = iter(self._factory())
            self._next = dict.fromkeys(self._next, 0)
            self.exhausted = False
        elif any(self._next[tp] > off for tp, off in positions.items() if tp in self._next):
            raise ValueError("MemorySource: cannot seek backwards without an event factory")
        self._skip = {tp: off for tp, off in positions.items() if tp in self._next}

    def close(self) -> None:
        self.exhausted = True
