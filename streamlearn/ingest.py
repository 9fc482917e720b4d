"""Records -> examples: decode, join per partition, and route bad input to the dead letters.

:class:`Ingest` is what a worker runs on each polled batch. It never raises on
bad input: a record that does not decode becomes a :class:`DeadLetter` (the
original bytes plus the reason), is counted, and the partition moves on.
It also tracks the next offset per (topic, partition) and the examples not
yet learned, which together with the joiners' state make a worker's
checkpointable progress.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from streamlearn.codec import DecodeError, record_decoder
from streamlearn.events import Example, Feedback, Schema
from streamlearn.join import JoinConfig, Joiner
from streamlearn.source import Record, TopicPartition


@dataclass(frozen=True)
class DeadLetter:
    record: Record
    reason: str  # stable code, e.g. "not_json", "unknown_class"
    detail: str


@dataclass
class IngestResult:
    examples: list[Example] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


class Ingest:
    def __init__(self, schema: Schema, join: JoinConfig | None = None) -> None:
        self.schema = schema
        self.decode = record_decoder(schema)
        self.join_cfg = join or JoinConfig()
        self.joiners: dict[int, Joiner] = {}  # partition -> joiner
        self.positions: dict[TopicPartition, int] = {}  # next offset to read
        # (topic, outcome) -> count; outcome: consumed | invalid
        self.counts: Counter[tuple[str, str]] = Counter()

    def joiner(self, partition: int) -> Joiner:
        j = self.joiners.get(partition)
        if j is None:
            j = self.joiners[partition] = Joiner(self.join_cfg, partition)
        return j

    def process(self, records: list[Record]) -> IngestResult:
        out = IngestResult()
        examples, counts, decode = out.examples, self.counts, self.decode
        # per-batch bookkeeping: offsets rise within a partition, so the last record of each sets its position
        self.positions.update({(rec.topic, rec.partition): rec.offset + 1 for rec in records})
        for topic, n in Counter(rec.topic for rec in records).items():
            counts[(topic, "consumed")] += n
        joiner, part = None, None
        for rec in records:
            try:
                events = decode(rec.value, rec.kind)
            except DecodeError as exc:
                counts[(rec.topic, "invalid")] += 1
                out.dead.append(DeadLetter(rec, exc.reason, exc.detail))
                continue
            if rec.partition != part:
                part = rec.partition
                joiner = self.joiner(part)
            assert joiner is not None
            for ev in events:
                ex = joiner.add_feedback(ev) if isinstance(ev, Feedback) else joiner.add_prediction(ev)
                if ex is not None:
                    examples.append(ex)
        return out

    def join_counts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for j in self.joiners.values():
            total.update(j.counts)
        return total

    @property
    def pending(self) -> int:
        return sum(j.pending for j in self.joiners.values())

    def snapshot(self) -> dict[str, Any]:
        return {
            "joiners": {p: j.snapshot() for p, j in self.joiners.items()},
            "positions": dict(self.positions),
            "counts": dict(self.counts),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.joiners = {int(p): Joiner.restore(s, self.join_cfg, int(p)) for p, s in state["joiners"].items()}
        self.positions = dict(state["positions"])
        self.counts = Counter(state["counts"])
