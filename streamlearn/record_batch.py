"""The records section of a Kafka record batch (message format v2), read straight into Records.

A fetched batch holds ``count`` records back to back, each (per Kafka's
protocol) a zigzag varint length, then: attributes (int8), timestamp delta
(varlong), offset delta (varint), key length (varint; -1 = null) and key,
value length (varint; -1 = null) and value, header count (varint) and
headers. :func:`read_records` walks them in one loop and builds one
:class:`~streamlearn.source.Record` each, skipping the timestamp and the
headers, which nothing downstream reads. kafka-python's own reader builds two
objects per record and calls a function per varint: its consume loop is the
``raw`` row of ``python benchmarks/kafka_throughput.py``, and KafkaSource
with this reader the ``source`` row.

This module never imports the Kafka client: :mod:`streamlearn.kafka_source`
hands it a batch's (decompressed) bytes and says which records to keep.
"""

from __future__ import annotations

from streamlearn.codec import Kind
from streamlearn.source import Record


class CorruptBatch(ValueError):
    """The bytes do not hold the records the batch header promised."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The zigzag varint at ``pos``, and the position after it."""
    b = buf[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    result, shift = b & 0x7F, 7
    while True:
        pos += 1
        b = buf[pos]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos + 1
        shift += 7
        if shift > 63:
            raise CorruptBatch(f"varint longer than 64 bits at byte {pos}")


def read_records(buf: bytes, pos: int, count: int, base_offset: int,
                 kind: Kind, topic: str, partition: int) -> list[Record]:
    """The ``count`` records starting at ``buf[pos]``, which must end exactly at ``len(buf)``."""
    out: list[Record] = []
    append, varint = out.append, _varint
    try:
        for _ in range(count):
            length, pos = varint(buf, pos)
            end = pos + length
            if length < 1 or end > len(buf):
                raise CorruptBatch(f"record of {length} bytes at byte {pos} of {len(buf)}")
            pos += 1  # attributes: unused in v2
            while buf[pos] & 0x80:  # timestamp delta: skipped
                pos += 1
            delta, pos = varint(buf, pos + 1)
            n, pos = varint(buf, pos)
            key = None
            if n >= 0:
                key, pos = buf[pos:pos + n], pos + n
            n, pos = varint(buf, pos)
            value = None
            if n >= 0:
                value, pos = buf[pos:pos + n], pos + n
            if pos >= end:  # the header count (at least one byte) must still be inside the record
                raise CorruptBatch(f"record at offset {base_offset + delta} overruns its length {length}")
            pos = end
            append(Record(kind, topic, partition, base_offset + delta, key, value))  # type: ignore[arg-type]
    except IndexError:
        raise CorruptBatch(f"batch at offset {base_offset} ends inside record {len(out)} of {count}") from None
    if pos != len(buf):
        raise CorruptBatch(f"{len(buf) - pos} bytes left after the {count} records of the batch at "
                           f"offset {base_offset}")
    return out
