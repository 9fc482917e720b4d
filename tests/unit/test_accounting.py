"""Where every consumed record went: a job's ``records`` breakdown adds up to ``events_consumed``, and a run
whose records mostly go to the dead letters, or whose feedback mostly misses its prediction, says so on
stderr (the progress callback) and in the summary's ``warnings``. Jobs run on :class:`LocalFleet` over
fixed record lists: no Ray, no Kafka, no timing."""

from __future__ import annotations

from collections import Counter
from typing import Any

from streamlearn import config
from streamlearn.config import JobConfig
from streamlearn.events import Event, Prediction
from streamlearn.job import Job
from streamlearn.kafka.produce import partition_for
from streamlearn.source import Record, TopicPartition
from tests.unit.local_fleet import LocalFleet
from tests.unit.named_stream import NAMES, as_json, crc32_partition, named_stream


class ListSource:
    """An EventSource over fixed records (in order), exhausted after the last."""

    def __init__(self, records: list[Record]) -> None:
        self.records, self.at, self.exhausted = records, 0, not records
        self._next: dict[TopicPartition, int] = {}

    def next_batch(self, max_records: int) -> list[Record]:
        out = self.records[self.at : self.at + max_records]
        self.at += len(out)
        self.exhausted = self.at >= len(self.records)
        for rec in out:
            self._next[(rec.topic, rec.partition)] = rec.offset + 1
        return out

    def positions(self) -> dict[TopicPartition, int]:
        return dict(self._next)

    def seek(self, positions: dict[TopicPartition, int]) -> None:
        raise NotImplementedError("these jobs never restore")

    def close(self) -> None:
        self.exhausted = True


def records_fleet(records: list[Record]) -> type[LocalFleet]:
    """A LocalFleet whose workers read ``records`` (each worker the partitions it owns)."""

    class RecordsFleet(LocalFleet):
        def __init__(self, cfg: JobConfig, assignment: list[list[int]]) -> None:
            super().__init__(cfg, assignment)
            for handle, parts in zip(self.handles, assignment, strict=True):
                handle.source = ListSource([r for r in records if r.partition in parts])

    return RecordsFleet


def to_records(events: list[Event], partitions: int, feedback_partition: Any = None) -> list[Record]:
    """Records keyed by id, partitioned by murmur2 (feedback by ``feedback_partition(key, n)`` if given)."""
    offsets: Counter[TopicPartition] = Counter()
    out = []
    for ev in events:
        kind = "prediction" if isinstance(ev, Prediction) else "feedback"
        key = ev.id.encode()
        part = (feedback_partition or partition_for)(key, partitions) if kind == "feedback" else \
            partition_for(key, partitions)
        topic = "streamlearn.predictions" if kind == "prediction" else "streamlearn.feedback"
        out.append(Record(kind, topic, part, offsets[(topic, part)], key, as_json(ev)))  # type: ignore[arg-type]
        offsets[(topic, part)] += 1
    return out


def job_config(**over: Any) -> JobConfig:
    base: dict[str, Any] = {"source": "embedded", "workers": 1, "partitions": 2, "max_records": 100,
                            "divergence": {"guard": "none"}, "metrics": {"port": None},
                            "data": {"dataset": "synthetic"},  # the embedded stream LocalFleet builds, unread
                            "ps": {"mode": "async", "grads_per_push": 4, "max_grads_per_push": 4}}
    base.update(over)
    return config.load(None, base, env={})


def run(cfg: JobConfig, records: list[Record]) -> tuple[dict[str, Any], list[str]]:
    said: list[str] = []
    job = Job(cfg, progress=said.append, fleet=records_fleet(records))
    return job.run(), said


def test_a_healthy_run_accounts_for_every_record() -> None:
    events = named_stream(600)
    cfg = job_config(classes=list(NAMES), n_features=8)
    s, said = run(cfg, to_records(events, 2))
    parts = s["records"]
    assert sum(parts.values()) == s["events_consumed"] == len(events)
    # every prediction judged once: each pair one example, nothing left waiting
    assert parts == {"example": len(events), "dead_letter": 0, "duplicate": 0, "expired": 0, "evicted": 0,
                     "pending": 0, "rewound": 0}
    assert s["join_hit_rate"] == 1.0 and s["warnings"] == [] and s["dead_letters"] == {}
    assert not [line for line in said if "WARNING" in line]


def test_forgetting_n_features_and_classes_is_said_loudly_and_every_record_is_counted() -> None:
    """The issue's run: an 8-feature stream with named classes, run with the default 64 features / 10 classes."""
    events = named_stream(1000)
    records = to_records(events, 2)
    labelled = sum(1 for ev in events if not isinstance(ev, Prediction) and ev.label is not None)
    judged = sum(1 for ev in events if not isinstance(ev, Prediction) and ev.correct is not None)
    s, said = run(job_config(), records)

    parts = s["records"]
    assert sum(parts.values()) == s["events_consumed"] == len(records) == 2000
    # predictions fail the width check, labels name no known class; correct/wrong feedback waits for
    # predictions that went to the dead letters: pending at the end, not nowhere
    assert s["dead_letters"] == {"bad_dense_length": 1000, "unknown_class": labelled}
    assert parts["dead_letter"] == s["invalid"] == 1000 + labelled
    assert parts["pending"] == judged and parts["example"] == 0
    assert s["examples_positive"] == s["examples_negative"] == 0

    (warning,) = [w for w in s["warnings"] if "dead letters" in w]
    assert f"{1000 + labelled} of 2000 records" in warning
    assert f"bad_dense_length {1000}" in warning and f"unknown_class {labelled}" in warning
    assert "--n-features" in warning and "--classes" in warning
    # said on the progress line early (after min_records records), and once
    early = [line for line in said if "WARNING" in line and "dead letters" in line]
    assert len(early) == 1


def test_feedback_partitioned_differently_gives_a_low_join_hit_rate_and_a_warning() -> None:
    """Predictions by murmur2 (the Java client), feedback by CRC32 (librdkafka's default): pairs miss."""
    events = named_stream(1000)
    records = to_records(events, 4, feedback_partition=crc32_partition)
    cfg = job_config(classes=list(NAMES), n_features=8, partitions=4, workers=2)
    s, said = run(cfg, records)
    met = sum(1 for ev in events if not isinstance(ev, Prediction)
              and crc32_partition(ev.id.encode(), 4) == partition_for(ev.id.encode(), 4))
    parts = s["records"]
    assert sum(parts.values()) == s["events_consumed"] == 2000
    assert parts["example"] == 2 * met and parts["pending"] == 2 * (1000 - met)
    assert s["join_hit_rate"] == round(met / 1000, 4) and s["join_hit_rate"] < 0.5
    (warning,) = s["warnings"]
    assert f"{met} of 1000 feedback events" in warning and "murmur2" in warning
    assert len([line for line in said if "WARNING" in line and "feedback" in line]) == 1


def test_the_thresholds_are_settings() -> None:
    """min_join_hit_rate 0 turns the join warning off; the dead-letter one likewise with max share 1."""
    events = named_stream(1000)
    cfg = job_config(classes=list(NAMES), n_features=8, partitions=4, health={"min_join_hit_rate": 0.0})
    s, _ = run(cfg, to_records(events, 4, feedback_partition=crc32_partition))
    assert s["join_hit_rate"] < 0.5 and s["warnings"] == []
    s, _ = run(job_config(health={"max_dead_letter_share": 1.0}), to_records(events, 2))
    # no dead-letter warning; the feedback waiting for the dead predictions now shows as a join warning
    (warning,) = s["warnings"]
    assert s["invalid"] > 1000 and warning.startswith("only 0 of") and "went to the dead letters" in warning
