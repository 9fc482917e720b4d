"""Helpers for the `streamlearn run` tests: the CLI as a subprocess, reading topics back, expected counts.

Plain functions and one small process wrapper; fixtures live in conftest.py and the test module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from streamlearn.codec import Kind, encode_json
from streamlearn.events import Event, Prediction, Schema
from streamlearn.ingest import Ingest
from streamlearn.kafka import KafkaSettings, create_topics, partition_for
from streamlearn.source import Record

RUN_TIMEOUT = 180.0  # one `run` on a loaded 2-CPU box; a hang fails the test instead of blocking the session
RAY_CPUS = "2"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}  # no stray config
    env["RAY_AUTH_MODE"] = "disabled"  # loopback-only throwaway cluster
    env["RAY_USAGE_STATS_ENABLED"] = "0"  # no phoning home from a test
    env.update(extra or {})
    return env


def cli_command(settings: KafkaSettings | None, *args: str) -> list[str]:
    """``python -m streamlearn.cli ARGS`` plus the topic flags of ``settings`` (if any)."""
    cmd = [sys.executable, "-m", "streamlearn.cli", *args]
    if settings is not None:
        cmd += ["--bootstrap-servers", settings.bootstrap_servers, "--predictions-topic", settings.predictions_topic,
                "--feedback-topic", settings.feedback_topic, "--dlq-topic", settings.dlq_topic,
                "--kafka-client", str(settings.client)]
    return cmd


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        """The last stdout line, parsed (every command ends with one JSON summary line)."""
        lines = self.stdout.strip().splitlines()
        assert lines, f"no summary on stdout (exit {self.returncode}); stderr:\n{self.stderr[-4000:]}"
        out: dict[str, Any] = json.loads(lines[-1])
        return out

    def ok(self) -> dict[str, Any]:
        assert self.returncode == 0, f"exit {self.returncode}; stderr:\n{self.stderr[-4000:]}"
        return self.summary


class Cli:
    """A ``streamlearn`` subprocess in its own process group, output in files (no pipe can fill up)."""

    def __init__(self, workdir: Path, settings: KafkaSettings | None, *args: str, env: dict[str, str] | None = None,
                 stdin: str | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.command = args[0]
        stem = f"{self.command}-{time.monotonic_ns()}"
        self.out_path, self.err_path = workdir / f"{stem}.out", workdir / f"{stem}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(cli_command(settings, *args), stdout=out, stderr=err,
                                         stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                         env=_env(env), start_new_session=True)
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin.encode())
            self.proc.stdin.close()

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = RUN_TIMEOUT) -> Done:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.command} did not exit within {timeout}s; stderr:\n"
                                 f"{self.stderr()[-4000:]}") from None
        return Done(code, self.out_path.read_text(errors="replace"), self.stderr())

    def wait_for_stderr(self, pattern: str, timeout: float = RUN_TIMEOUT) -> re.Match[str]:
        """Block until a stderr line matches ``pattern`` (the process must still be running)."""
        regex = re.compile(pattern, re.MULTILINE)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = regex.search(self.stderr())
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before /{pattern}/; stderr:\n"
                                     f"{self.stderr()[-4000:]}")
            time.sleep(0.2)
        self.kill()
        raise AssertionError(f"no /{pattern}/ on stderr within {timeout}s; stderr:\n{self.stderr()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL this process's group (it was started as its own session, so that is only its children)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def wait_until(what: str, check: Callable[[], bool], timeout: float = RUN_TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"{what}: not within {timeout}s"
        time.sleep(0.2)


def progress_records(stderr: str) -> int:
    """The newest record count of a run's progress lines (``run: N records, ...``) on stderr."""
    counts = re.findall(r"^run: (\d+) records", stderr, re.MULTILINE)
    return int(counts[-1]) if counts else 0


def cli(workdir: Path, settings: KafkaSettings | None, *args: str, env: dict[str, str] | None = None,
        stdin: str | None = None, timeout: float = RUN_TIMEOUT) -> Done:
    return Cli(workdir, settings, *args, env=env, stdin=stdin).wait(timeout)


def run_args(*extra: str, workers: int = 2) -> tuple[str, ...]:
    return ("run", "--workers", str(workers), "--ray-num-cpus", RAY_CPUS, *extra)


# -- the broker's side ------------------------------------------------------------------


def end_offsets(settings: KafkaSettings, partitions: int) -> dict[str, int]:
    """``"topic:partition" -> end offset`` of the predictions and feedback topics (the summary's format)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in (settings.predictions_topic, settings.feedback_topic)
               for p in range(partitions)]
        ends = consumer.end_offsets(tps)
    finally:
        consumer.close()
    return {f"{tp.topic}:{tp.partition}": off for tp, off in ends.items()}


def read_topic(settings: KafkaSettings, topic: str, want: int, timeout: float = 30.0) -> list[Any]:
    """Every record of ``topic`` from the start: until ``want`` came, then a short look for extras."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    out: list[Any] = []
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in parts])
        end = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < end:
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(recs)
        for recs in consumer.poll(timeout_ms=1000).values():  # nothing beyond what we expect
            out.extend(recs)
    finally:
        consumer.close()
    return out


# -- what a run should report -------------------------------------------------------------


@dataclass
class Expected:
    """Example counts an exact run must report, from replaying the events through Ingest in process."""

    lineage: Counter[tuple[int, str]] = field(default_factory=Counter)  # (partition, polarity) -> examples
    duplicates: int = 0

    @property
    def positive(self) -> int:
        return sum(n for (_, pol), n in self.lineage.items() if pol == "positive")

    @property
    def negative(self) -> int:
        return sum(n for (_, pol), n in self.lineage.items() if pol == "negative")

    @property
    def by_partition(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (p, _), n in self.lineage.items():
            out[str(p)] += n
        return dict(out)


def replay(events: list[Event], partitions: int, schema: Schema) -> Expected:
    """Join ``events`` (arrival order) per partition as the workers do, with the job's default join config."""
    ingest = Ingest(schema)
    records = []
    for i, ev in enumerate(events):
        kind: Kind = "prediction" if isinstance(ev, Prediction) else "feedback"
        key = ev.id.encode()
        records.append(Record(kind, kind, partition_for(key, partitions), i, key, encode_json(ev)))
    res = ingest.process(records)
    assert not res.dead
    joins = ingest.join_counts()
    assert joins["expired"] == joins["evicted"] == 0  # the counts below assume nothing aged out
    lineage = Counter((ex.partition, "positive" if ex.positive else "negative") for ex in res.examples)
    return Expected(lineage, joins["duplicate"])


def assert_trained_exactly(summary: dict[str, Any], expected: Expected) -> None:
    """A run's example counts (this run and the model's lineage) equal the in-process replay."""
    got = {k: summary[k] for k in ("examples_positive", "examples_negative", "model_examples_positive",
                                   "model_examples_negative", "model_examples_by_partition", "duplicates",
                                   "expired")}
    assert got == {
        "examples_positive": expected.positive, "examples_negative": expected.negative,
        "model_examples_positive": expected.positive, "model_examples_negative": expected.negative,
        "model_examples_by_partition": expected.by_partition, "duplicates": expected.duplicates, "expired": 0,
    }


# -- topics that live for a whole module (the conftest factory is per test) -------------------


@contextlib.contextmanager
def module_topics(bootstrap: str) -> Iterator[Callable[[int], KafkaSettings]]:
    """``make(partitions)`` -> settings for fresh uuid-named topics; all deleted on exit."""
    made: list[str] = []

    def make(partitions: int) -> KafkaSettings:
        u = uuid.uuid4().hex[:12]
        settings = KafkaSettings(bootstrap, predictions_topic=f"test-{u}.predictions",
                                 feedback_topic=f"test-{u}.feedback", dlq_topic=f"test-{u}.dlq",
                                 group_id=f"test-{u}", connect_timeout_ms=20_000)
        made.extend([settings.predictions_topic, settings.feedback_topic, settings.dlq_topic])
        create_topics(settings, partitions)
        return settings

    try:
        yield make
    finally:
        if made:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=20_000)
            try:
                gone = [t for t in made if t in set(admin.list_topics())]
                if gone:
                    admin.delete_topics(gone, timeout_ms=20_000, raise_errors=False)
            finally:
                admin.close()
