"""KafkaSource: partition p of BOTH topics as :class:`~streamlearn.source.Record` batches, on either client.

Explicit assignment, never group rebalancing (which could split a co-partitioned pair). Offsets of truth
live in checkpoints: ``positions()`` / ``seek()``; committing to the consumer group is for lag monitoring
only. A broker outage is logged and retried with backoff; a failed read never advances a position.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from streamlearn.kafka.client import KafkaSetupError, KafkaUnavailable, Pair, Reader, ReaderConfig, reader
from streamlearn.kafka.settings import KafkaSettings
from streamlearn.source import Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceConfig:
    """Consumer tuning. Defaults favour throughput; see benchmarks/kafka_throughput.py."""

    poll_timeout_ms: int = 200  # longest a next_batch waits when nothing is buffered
    fetch_max_bytes: int = 64 << 20  # per fetch response, all partitions
    max_partition_fetch_bytes: int = 8 << 20  # per partition per fetch
    check_crcs: bool = False  # TCP and the broker (it checks CRCs on produce) cover the path; librdkafka's default
    idle_probe_s: float = 2.0  # no records this long -> ask the broker if it is still there
    probe_timeout_ms: int = 3_000  # that question's deadline
    backoff_s: float = 0.5  # first retry wait after a failure; doubles per failure
    max_backoff_s: float = 5.0  # cap: next_batch never sleeps longer than this
    # Take every record the client has fetched at once, so its next fetch is in flight while the worker
    # learns from them; at most this many records wait in the source.
    read_ahead: int = 50_000

    def __post_init__(self) -> None:
        for key in ("poll_timeout_ms", "fetch_max_bytes", "max_partition_fetch_bytes", "probe_timeout_ms",
                    "read_ahead"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not (self.idle_probe_s > 0 and self.backoff_s > 0 and self.max_backoff_s >= self.backoff_s):
            raise ValueError("idle_probe_s, backoff_s: must be > 0 and max_backoff_s >= backoff_s")

    def reader_config(self) -> ReaderConfig:
        return ReaderConfig(fetch_max_bytes=self.fetch_max_bytes,
                            max_partition_fetch_bytes=self.max_partition_fetch_bytes, check_crcs=self.check_crcs,
                            reconnect_backoff_max_ms=int(self.max_backoff_s * 1000))


class KafkaSource:
    """Partitions ``partitions`` of the predictions AND feedback topics, as :class:`Record` batches.

    ``positions`` (e.g. from a checkpoint) says where to start per
    (topic, partition); a pair missing there starts at the earliest offset.
    ``positions()`` only ever moves past records that ``next_batch`` returned.
    Broker outages are retried with backoff (``next_batch`` returns ``[]``
    meanwhile, after at most ``max_backoff_s`` plus ``probe_timeout_ms``, or
    ``connect_timeout_ms`` while the broker was never reached); bad
    credentials, ACLs or missing topics raise :class:`KafkaSetupError`.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        partitions: Sequence[int],
        positions: Mapping[Pair, int] | None = None,
        config: SourceConfig | None = None,
    ) -> None:
        if not partitions:
            raise ValueError("partitions: a source needs at least one partition")
        if any(p < 0 for p in partitions) or len(set(partitions)) != len(partitions):
            raise ValueError(f"partitions: must be distinct numbers >= 0, got {list(partitions)}")
        self.settings = settings
        self.cfg = config or SourceConfig()
        self.partitions = sorted(partitions)
        self._pairs: list[Pair] = [(t, p) for t in settings.topics.values() for p in self.partitions]
        self._positions: dict[Pair, int] = {}  # next offset to read; the truth
        self._wanted: dict[Pair, int] = {}  # seek targets not yet applied (-1: earliest)
        self._reader: Reader | None = None
        self._ahead: list[list[Record]] = []  # read, not yet returned: runs of one (topic, partition)
        self._ahead_n = 0
        self._failures = 0  # consecutive failures, for backoff
        self._down_since: float | None = None  # last healthy moment before the current outage
        self._last_ok = time.monotonic()  # last records or successful probe
        self.records = 0  # records returned by next_batch, over the source's life
        self._ends: dict[Pair, int] = {}  # latest known end offsets, for lag()
        self._ends_asked = float("-inf")  # when lag() last asked the broker for them
        self._closed = False
        self.seek(dict(positions or {}))
        self._connected(sleep=False)  # fail fast on missing topics; an unreachable broker is retried later

    # -- the EventSource contract ------------------------------------------

    def next_batch(self, max_records: int) -> list[Record]:
        """Up to ``max_records`` records of the owned partitions, in offset order per partition."""
        if self._closed:
            raise ValueError("next_batch: source is closed")
        if max_records < 1:
            raise ValueError(f"next_batch: max_records must be >= 1, got {max_records}")
        if self._ahead_n < max_records and not self._read_ahead():
            return []
        out: list[Record] = []
        positions, ahead = self._positions, self._ahead
        while ahead and len(out) < max_records:
            run = ahead[0]
            room = max_records - len(out)
            if len(run) > room:
                ahead[0], run = run[room:], run[:room]
            else:
                del ahead[0]
            out.extend(run)
            last = run[-1]
            positions[(last.topic, last.partition)] = last.offset + 1
        self._ahead_n -= len(out)
        self.records += len(out)
        return out

    def _read_ahead(self) -> bool:
        """Move what the client has fetched into ``_ahead``; False when there is nothing to return."""
        client = self._connected()
        if client is None:
            return False
        try:
            if self._wanted:
                self._apply_seeks(client)
            wait = 0.0 if self._ahead_n else self.cfg.poll_timeout_ms / 1000
            runs = client.read(self.cfg.read_ahead, wait)
        except KafkaUnavailable as exc:  # broker gone, timeouts, protocol hiccups: retry, never advance
            self._failed(str(exc))
            return False
        if not runs:
            if not self._ahead_n:
                self._probe_if_idle(client)
            return self._ahead_n > 0
        self._last_ok = time.monotonic()
        self._recovered()
        for run in runs:
            if run:
                self._ahead.append(run)
                self._ahead_n += len(run)
        return True

    def positions(self) -> dict[Pair, int]:
        """Next offset to read per (topic, partition); a pair not yet resolved is left out (= earliest)."""
        out = {tp: off for tp, off in self._wanted.items() if off >= 0}
        out.update(self._positions)
        return out

    def seek(self, positions: Mapping[Pair, int]) -> None:
        """Restart from these offsets; owned pairs missing here restart at the earliest offset.

        Pairs of partitions this source does not own are ignored, so a whole
        job's checkpoint can be passed to every worker.
        """
        self._wanted = dict.fromkeys(self._pairs, -1)  # -1: earliest
        for (topic, part), off in positions.items():
            key = (topic, int(part))
            if key in self._wanted:
                if int(off) < 0:
                    raise ValueError(f"seek: negative offset {off} for {topic}[{part}]")
                self._wanted[key] = int(off)
        self._positions = {}  # applied by the next next_batch, before it reads
        self._drop_ahead()

    def _drop_ahead(self) -> None:
        """Forget read records not yet returned: the client is about to be moved back to ``_positions``."""
        self._ahead, self._ahead_n = [], 0

    def close(self) -> None:
        self._closed = True
        self._drop_ahead()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- monitoring --------------------------------------------------------

    def commit_for_monitoring(self) -> bool:
        """Commit the current positions to the consumer group (lag dashboards only). False on failure."""
        client, positions = self._reader, self.positions()
        if client is None or not positions:
            return False
        try:
            client.commit(positions, self.cfg.probe_timeout_ms / 1000)
        except (KafkaUnavailable, KafkaSetupError) as exc:
            log.warning("kafka source: monitoring commit to group %r failed (%s); positions unaffected",
                        self.settings.group_id, exc)
            return False
        return True

    def lag(self) -> dict[Pair, int]:
        """Records behind the end of each owned (topic, partition): cheap enough to call every step.

        End offsets come from the high watermarks of fetch responses (no
        request); pairs without one yet are asked for at most once per
        ``idle_probe_s``, never while the broker is down. Pairs with no known
        end are left out ({} before the first connection).
        """
        client = self._reader  # never connects: a monitoring call must not block on a dead broker
        if client is None:
            return {}
        ends = self._ends
        ends.update(client.known_ends(self._pairs))
        unknown = [tp for tp in self._pairs if tp not in ends]
        now = time.monotonic()
        if unknown and self._down_since is None and now - self._ends_asked >= self.cfg.idle_probe_s:
            self._ends_asked = now
            try:
                ends.update({tp: high for tp, (_, high) in
                             client.watermarks(unknown, self.cfg.probe_timeout_ms / 1000).items()})
            except (KafkaUnavailable, KafkaSetupError) as exc:
                log.warning("kafka source: end offsets unavailable (%s)", exc)
        pos = self.positions()
        return {tp: max(0, end - pos[tp]) for tp, end in ends.items() if tp in pos}

    # -- connection, seeks and retries -------------------------------------

    def _connected(self, sleep: bool = True) -> Reader | None:
        if self._reader is not None:
            return self._reader
        client: Reader | None = None
        try:
            client = reader(self.settings, self.cfg.reader_config())
            self._check_partitions(client)
            self._apply_seeks(client)  # resolves "earliest" so positions() is complete
        except KafkaSetupError:
            if client is not None:
                client.close()
            raise
        except KafkaUnavailable as exc:
            if client is not None:
                client.close()
            self._failed(str(exc), sleep=sleep)
            return None
        self._reader = client
        self._last_ok = time.monotonic()
        log.info("kafka source: partitions %s of %s and %s from %s (%s)", self.partitions,
                 self.settings.predictions_topic, self.settings.feedback_topic, self.positions(),
                 self.settings.client)
        self._recovered()
        return client

    def _check_partitions(self, client: Reader) -> None:
        timeout_s = self.settings.connect_timeout_ms / 1000
        for topic in self.settings.topics.values():
            have = client.partitions(topic, timeout_s)
            if not have:
                raise KafkaSetupError(f"topic {topic} does not exist at {self.settings.bootstrap_servers} "
                                      "(streamlearn topics create makes it)")
            missing = sorted(set(self.partitions) - set(have))
            if missing:
                raise KafkaSetupError(f"topic {topic} has {len(have)} partitions; partitions {missing} "
                                      "do not exist")

    def _apply_seeks(self, client: Reader) -> None:
        """Move the client to the wanted offsets (earliest where none), then to the tracked ones."""
        earliest = [tp for tp, off in self._wanted.items() if off < 0]
        if earliest:
            for tp, (low, _) in client.watermarks(earliest, self.cfg.probe_timeout_ms / 1000).items():
                self._wanted[tp] = low
        for tp, off in self._wanted.items():
            self._positions.setdefault(tp, off)
        self._wanted = {}
        client.assign(self._positions)

    def _failed(self, what: str, sleep: bool = True) -> None:
        """Log a failure, put the client back at the tracked positions, wait the backoff."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = self._last_ok
        self._failures += 1
        wait = min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2 ** (self._failures - 1))
        log.warning("kafka source: broker %s unavailable for %.1fs (%s); positions kept, retry %d in %.1fs",
                    self.settings.bootstrap_servers, now - self._down_since, what, self._failures, wait)
        self._drop_ahead()
        if self._reader is not None and self._positions:
            try:  # whatever the client fetched but we did not return is read again
                self._reader.assign(self._positions)
            except KafkaUnavailable as exc:
                log.debug("kafka source: re-seek after failure: %s", exc)
        if sleep:
            time.sleep(wait)

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning("kafka source: broker %s reachable again after %.1fs; resuming at %s",
                        self.settings.bootstrap_servers, time.monotonic() - self._down_since,
                        self.positions())
        self._down_since = None
        self._failures = 0

    def _probe_if_idle(self, client: Reader) -> None:
        """Nothing came for a while: idle stream, or a broker that is gone? Ask, and back off if gone."""
        if self._down_since is None and time.monotonic() - self._last_ok < self.cfg.idle_probe_s:
            return
        try:
            client.watermarks(self._pairs[:1], self.cfg.probe_timeout_ms / 1000)
        except KafkaUnavailable as exc:
            self._failed(f"no answer: {exc}")
            return
        self._last_ok = time.monotonic()  # idle but healthy: probe again after idle_probe_s
        self._recovered()
