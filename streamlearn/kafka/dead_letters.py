"""The dead-letter sink: bad records to the DLQ topic with their original bytes, the reason in headers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from streamlearn.ingest import DeadLetter
from streamlearn.kafka.client import KafkaSetupError, KafkaUnavailable, Writer, WriterConfig, what, writer
from streamlearn.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

# DLQ headers (values are UTF-8 text)
H_ERROR = "streamlearn.error"  # reason code, e.g. "not_json"
H_DETAIL = "streamlearn.error.detail"
H_TOPIC = "streamlearn.source.topic"
H_PARTITION = "streamlearn.source.partition"
H_OFFSET = "streamlearn.source.offset"
H_VALUE_NULL = "streamlearn.value_null"  # "1": the source value was null; the DLQ value is b""
H_TRUNCATED_FROM = "streamlearn.truncated_from"  # key + value were cut; their original size in bytes

# A DLQ record (key + value + headers) must fit the producer's request limit and the broker's
# message.max.bytes, both ~1 MiB by default; this budget leaves room for the record and batch framing.
DLQ_BUDGET_BYTES = 1_000_000
RETRY_FIRST_S = 0.5  # first wait before re-sending a letter that failed; doubles per retry ...
RETRY_MAX_S = 30.0  # ... up to this; back to RETRY_FIRST_S after an acknowledged write


def _utf8_prefix(text: str, limit: int) -> bytes:
    """At most ``limit`` bytes of ``text`` as UTF-8, never cutting a character in half."""
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore").encode("utf-8")


def letter(dead: DeadLetter, max_detail_bytes: int,
           max_record_bytes: int) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of the DLQ record for ``dead``: original bytes, reason and source in headers.

    A null value becomes b"" with ``H_VALUE_NULL`` (Kafka clients refuse a record with neither key
    nor value). Key + value over ``max_record_bytes`` are cut (the value first) and ``H_TRUNCATED_FROM``
    gives their original size; topic/partition/offset still point at the full record.
    """
    rec = dead.record
    key = rec.key
    raw: bytes | None = rec.value  # typed bytes, but a source record's value can be null
    value = b"" if raw is None else bytes(raw)
    headers = [
        (H_ERROR, dead.reason.encode()),
        (H_DETAIL, _utf8_prefix(dead.detail, max_detail_bytes)),
        (H_TOPIC, rec.topic.encode()),
        (H_PARTITION, str(rec.partition).encode()),
        (H_OFFSET, str(rec.offset).encode()),
    ]
    if raw is None:
        headers.append((H_VALUE_NULL, b"1"))
    key_len = 0 if key is None else len(key)
    if key_len + len(value) > max_record_bytes:
        headers.append((H_TRUNCATED_FROM, str(key_len + len(value)).encode()))
        value = value[:max(0, max_record_bytes - key_len)]
        if key is not None and key_len > max_record_bytes:
            key = key[:max_record_bytes]
    return key, value, headers


class DeadLetterSink:
    """Writes :class:`~streamlearn.ingest.DeadLetter` records to the DLQ topic, losing none.

    The value and key are the original bytes, so a fixed record can be
    replayed as is; why it failed and where it came from travel in headers
    (a null value and a cut oversized record are marked there too).

    ``write`` never raises and blocks at most ``max_block_ms`` (1 s). The
    client retries a delivery itself; a letter whose send raises or whose
    delivery still fails (a missing DLQ, a refused record, an outage longer
    than the client's delivery timeout) waits in a retry list, which
    :meth:`retry` re-sends with a backoff of 0.5 s doubling to 30 s, reset by
    an acknowledged write. While letters wait, new ones queue behind them
    without a send. :meth:`unacked` is every letter not yet acknowledged, in
    write order: after :meth:`flush` it is what a checkpoint must keep and
    re-write after a restore (the DLQ is at least once: a letter whose ack was
    lost may arrive twice). ``sent`` counts letters given to ``write``,
    ``written`` acknowledged ones, ``failed`` failed send attempts. Outcomes
    may arrive on the client's own thread (kafka-python), hence the lock.
    """

    def __init__(self, settings: KafkaSettings, max_detail_bytes: int = 1000,
                 max_record_bytes: int = 900_000, max_block_ms: int = 1000) -> None:
        if max_detail_bytes < 0 or max_record_bytes < 0 or max_detail_bytes + max_record_bytes > DLQ_BUDGET_BYTES:
            raise ValueError(f"max_record_bytes + max_detail_bytes: must be >= 0 each and <= {DLQ_BUDGET_BYTES} "
                             f"in all, got {max_record_bytes} + {max_detail_bytes}")
        if max_block_ms < 1:
            raise ValueError(f"max_block_ms: must be >= 1, got {max_block_ms}")
        self.settings = settings
        self.max_detail_bytes = max_detail_bytes
        self.max_record_bytes = max_record_bytes
        self.sent = 0
        self.written = 0
        self.failed = 0
        self._lock = threading.Lock()  # guards everything below
        self._seq = 0  # write order of the next letter
        self._in_flight: dict[int, DeadLetter] = {}  # seq -> letter handed to the client, not yet acked
        self._waiting: dict[int, DeadLetter] = {}  # seq -> letter whose send failed, for retry()
        self._delay_s = RETRY_FIRST_S
        self._retry_at = 0.0  # monotonic time before which retry() does nothing
        self._down_since: float | None = None  # set while failing; the failure was logged once
        try:
            self._client: Writer = writer(settings, WriterConfig(linger_ms=5, block_ms=max_block_ms))
        except KafkaUnavailable as exc:
            raise KafkaSetupError(f"cannot use Kafka at {settings.bootstrap_servers}: {exc}") from exc

    def write(self, dead: DeadLetter) -> None:
        """Send one letter (asynchronously); never raises."""
        with self._lock:
            seq = self._seq
            self._seq += 1
            self.sent += 1
            if self._waiting:  # failing now: queue behind the others, retry() sends them in order
                self._waiting[seq] = dead
                return
        self._send(seq, dead)

    def write_many(self, dead: Iterable[DeadLetter]) -> None:
        for d in dead:
            self.write(d)
        self._client.poll()

    def retry(self) -> int:
        """Re-send the waiting letters if the backoff has passed; returns how many were handed to the client.

        Called on every worker step: without waiting letters it costs a dict check (and serving the
        client's delivery callbacks).
        """
        self._client.poll()
        if not self._waiting:
            return 0
        now = time.monotonic()
        with self._lock:
            if now < self._retry_at or not self._waiting:
                return 0
            due = sorted(self._waiting.items())
            self._waiting.clear()
            self._delay_s = min(2 * self._delay_s, RETRY_MAX_S)
            self._retry_at = now + self._delay_s
        for i, (seq, dead) in enumerate(due):
            if not self._send(seq, dead):  # the send raised: still down, keep the rest for the next retry
                with self._lock:
                    self._waiting.update(due[i + 1:])
                return i
        return len(due)

    def unacked(self) -> list[DeadLetter]:
        """Every letter written but not acknowledged by the broker (in flight or waiting), in write order."""
        self._client.poll()
        with self._lock:
            pending = {**self._in_flight, **self._waiting}
        return [pending[seq] for seq in sorted(pending)]

    def _send(self, seq: int, dead: DeadLetter) -> bool:
        """Hand one letter to the client; False (and the letter waits for retry) if that raised."""
        key, value, headers = letter(dead, self.max_detail_bytes, self.max_record_bytes)
        with self._lock:
            self._in_flight[seq] = dead

        def delivered(exc: BaseException | None) -> None:
            if exc is None:
                self._ok(seq)
            else:
                self._error(seq, dead, exc)

        try:
            self._client.send(self.settings.dlq_topic, value, key, headers, delivered)
        except Exception as exc:  # no metadata within max_block_ms, a full queue, a closed client, ...
            self._error(seq, dead, exc)
            return False
        return True

    def _ok(self, seq: int) -> None:
        with self._lock:
            self._in_flight.pop(seq, None)
            self.written += 1
            self._delay_s = RETRY_FIRST_S
            down_since, waiting = self._down_since, len(self._waiting)
            if down_since is not None and not waiting:
                self._down_since = None
        if down_since is not None and not waiting:
            log.warning("dead letter sink: writing to %s again after %.1fs", self.settings.dlq_topic,
                        time.monotonic() - down_since)

    def _error(self, seq: int, dead: DeadLetter, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            self._in_flight.pop(seq, None)
            if not self._waiting:
                self._retry_at = max(self._retry_at, now + self._delay_s)
            self._waiting[seq] = dead
            self.failed += 1
            first = self._down_since is None
            if first:
                self._down_since = now
            pending = len(self._in_flight) + len(self._waiting)
        rec = dead.record
        log.log(logging.ERROR if first else logging.DEBUG,
                "dead letter sink: could not write %s[%d]@%d to %s: %s; %d letter(s) pending, retrying "
                "every %.1f-%.0fs%s", rec.topic, rec.partition, rec.offset, self.settings.dlq_topic, what(exc),
                pending, RETRY_FIRST_S, RETRY_MAX_S, " (logged once until a write succeeds)" if first else "")

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait up to ``timeout_s`` for in-flight letters to be acknowledged or failed; never raises."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if end is None else end - time.monotonic()
            with self._lock:
                in_flight = len(self._in_flight)
            if not in_flight or (left is not None and left <= 0):
                break
            try:
                if not self._client.flush(left):
                    break
            except Exception as exc:
                log.debug("dead letter sink: flush: %s", what(exc))
                time.sleep(0.01)  # no busy loop while the client settles
            else:
                # kafka-python can return with an outcome still to run (a batch split after
                # MessageSizeTooLarge): wait for it a moment rather than spin
                time.sleep(0.001)
        with self._lock:
            in_flight = len(self._in_flight)
        if in_flight:
            log.warning("dead letter sink: flush to %s incomplete, %d letter(s) still in flight",
                        self.settings.dlq_topic, in_flight)

    def close(self, timeout_s: float | None = 10.0) -> None:
        self.flush(timeout_s)
        self._client.close(timeout_s if timeout_s is not None else 10.0)
        lost = len(self.unacked())
        if lost:
            log.error("dead letter sink: closed with %d letter(s) not written to %s (keep unacked() to re-write "
                      "them)", lost, self.settings.dlq_topic)

    def __enter__(self) -> DeadLetterSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
