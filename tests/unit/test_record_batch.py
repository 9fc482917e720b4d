"""Reading record batches: streamlearn.record_batch against kafka-python's own reader, on batches it builds."""

from __future__ import annotations

import random

import pytest
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder

from streamlearn.kafka_source import _batch_hooks_work, batch_records
from streamlearn.record_batch import CorruptBatch, read_records
from streamlearn.source import Record

GZIP = 1  # kafka-python's compression_type code


def _built(rows: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]],
           compression: int = 0) -> bytes:
    builder = MemoryRecordsBuilder(magic=2, compression_type=compression, batch_size=1 << 24)
    for ts, key, value, headers in rows:
        assert builder.append(ts, key, value, headers) is not None
    builder.close()
    return bytes(builder.buffer())


def _theirs(buf: bytes) -> list[tuple[int, bytes | None, bytes | None]]:
    batch = MemoryRecords(buf).next_batch()
    return [(r.offset, r.key, r.value) for r in batch]


def _ours(buf: bytes) -> list[Record]:
    return batch_records(MemoryRecords(buf).next_batch(), "feedback", "fb", 3)


def _random_rows(rng: random.Random, n: int) -> list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    def blob(most: int) -> bytes | None:
        return None if rng.random() < 0.1 else rng.randbytes(rng.choice([0, 1, rng.randrange(most)]))

    base = 1_700_000_000_000
    return [(base + rng.randrange(-10**9, 10**9),  # negative deltas too: varlongs of every length
             blob(300), blob(5000),
             [(f"h{j}", rng.randbytes(rng.randrange(40))) for j in range(rng.choice([0, 0, 1, 3]))])
            for _ in range(n)]


@pytest.mark.parametrize("compression", [0, GZIP])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reads_what_kafka_python_reads(seed: int, compression: int) -> None:
    rng = random.Random(seed)
    buf = _built(_random_rows(rng, 300), compression)  # 300: offset deltas of two bytes too
    got = _ours(buf)
    assert [(r.offset, r.key, r.value) for r in got] == _theirs(buf)
    assert {(r.kind, r.topic, r.partition) for r in got} == {("feedback", "fb", 3)}
    assert all(type(r.value) is bytes for r in got if r.value is not None)  # not bytearray views


def test_a_hand_written_record() -> None:
    # length 8 (zigzag 16), attributes, timestamp delta 0, offset delta 2, key null (-1), value "hi", no headers
    buf = bytes([16, 0, 0, 4, 1, 4]) + b"hi" + bytes([0])
    assert read_records(buf, 0, 1, 40, "prediction", "p", 0) == [Record("prediction", "p", 0, 42, None, b"hi")]
    assert read_records(b"xx" + buf, 2, 1, 40, "prediction", "p", 0)[0].value == b"hi"


@pytest.mark.parametrize(("buf", "count", "says"), [
    (bytes([16, 0, 0, 4, 1, 4]) + b"hi" + bytes([0]), 2, "ends inside record 1 of 2"),
    (bytes([16, 0, 0, 4, 1, 4]) + b"hi" + bytes([0, 0]), 1, "1 bytes left"),
    (bytes([16, 0, 0, 4, 1, 4]) + b"hi", 1, "of 8"),  # the record runs past the buffer
    (bytes([12, 0, 0, 4, 1, 4]) + b"hi" + bytes([0, 0, 0]), 1, "overruns its length 6"),  # value past the length
    (bytes([16, 0, 0, 4, 1, 100]) + b"hi" + bytes([0]), 1, "overruns"),  # value length 50, past the record
    (bytes([0, 0]), 1, "record of 0 bytes"),
    (bytes([0xFF] * 11), 1, "longer than 64 bits"),
])
def test_corrupt_records_are_named(buf: bytes, count: int, says: str) -> None:
    with pytest.raises(CorruptBatch, match=says):
        read_records(buf, 0, count, 40, "prediction", "p", 0)


def test_the_batch_of_a_truncated_fetch_is_corrupt() -> None:
    buf = _built(_random_rows(random.Random(5), 20))
    batch = MemoryRecords(buf).next_batch()
    iter(batch)
    whole = bytes(batch._buffer)
    with pytest.raises(CorruptBatch):
        read_records(whole[:-3], batch._pos, batch.records_count, 0, "prediction", "p", 0)


def test_this_kafka_python_has_the_hooks() -> None:
    # the installed client is the one CI runs: the direct reader must be on there, or the source is slow
    assert _batch_hooks_work()
