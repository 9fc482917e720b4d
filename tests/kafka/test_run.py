"""`streamlearn run` end to end against the real broker: the CLI in a subprocess, counts checked exactly.

Expected example counts come from replaying the same simulated events through Ingest in process
(run_helpers.replay); offsets are checked against the topics' end offsets. Each `run` starts its own
local Ray (2 CPUs), so topics and runs are shared where a test only reads.
"""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewPartitions
from kafka_helpers import MALFORMED_CORE, SCHEMA, Broker, Sent, TopicFactory, send_malformed, simulate
from run_helpers import (
    Cli,
    Expected,
    assert_trained_exactly,
    cli,
    end_offsets,
    module_topics,
    progress_records,
    read_topic,
    replay,
    run_args,
    wait_until,
)

from streamlearn.events import Feedback, Prediction
from streamlearn.kafka import (
    H_DETAIL,
    H_ERROR,
    H_OFFSET,
    H_PARTITION,
    H_TOPIC,
    KafkaSettings,
    partition_for,
    produce_stream,
)
from tests.unit.named_stream import NAMES, as_json, crc32_partition, named_stream

pytestmark = pytest.mark.kafka

# label answers, unjudged predictions, duplicates and feedback before its prediction: every join path
SIM = {"judged_share": 0.8, "label_share": 0.3, "duplicate_share": 0.05, "out_of_order_share": 0.1}
SIM_FLAGS = ("--judged-share", "0.8", "--label-share", "0.3", "--duplicate-share", "0.05",
             "--out-of-order-share", "0.1")
# More records than two polls per worker (2 x 2 x 2000): a run that stops early cannot pass by luck.
SHARED_EVENTS = 5000
IDLE = ("--until-idle", "3")


def produce(workdir: Path, settings: KafkaSettings, events: int, seed: int, *extra: str) -> dict[str, Any]:
    return cli(workdir, settings, "produce", "--events", str(events), "--seed", str(seed), *SIM_FLAGS,
               *extra).ok()


def checkpoints(directory: Path) -> list[Path]:
    return sorted(directory.glob("checkpoint-*.slck"))


# -- shared topics ----------------------------------------------------------------------------------


@dataclass
class Stream:
    settings: KafkaSettings
    records: int  # what `produce` wrote
    expected: Expected


ModuleTopics = Callable[[int], KafkaSettings]


@pytest.fixture(scope="module")
def topics(kafka_broker: Broker) -> Iterator[ModuleTopics]:
    """``topics(partitions)``: uuid topics that live for this module (conftest's factory is per test)."""
    with module_topics(kafka_broker.bootstrap) as make:
        yield make


@pytest.fixture(scope="module")
def shared(topics: ModuleTopics, tmp_path_factory: pytest.TempPathFactory) -> Stream:
    """A JSON stream written by `streamlearn produce` to 2 partitions; runs only read it."""
    settings = topics(2)
    produced = produce(tmp_path_factory.mktemp("produce"), settings, SHARED_EVENTS, 7)
    return Stream(settings, produced["records"], replay(simulate(SHARED_EVENTS, seed=7, **SIM), 2, SCHEMA))


# -- 1. every record once, exact joins ---------------------------------------------------------------


def test_run_consumes_every_record_once_and_trains_exactly(shared: Stream, tmp_path: Path) -> None:
    s = cli(tmp_path, shared.settings, *run_args(*IDLE)).ok()
    assert s["stop_reason"] == "until_idle"
    assert s["workers"] == 2
    assert s["events_consumed"] == shared.records
    assert s["offsets"] == end_offsets(shared.settings, 2)  # every partition of both topics read to its end
    assert s["invalid"] == 0
    assert_trained_exactly(s, shared.expected)
    assert s["restored_from"] is None and s["checkpoints"] == 0
    assert sum(s["records"].values()) == s["events_consumed"] and s["warnings"] == []  # every record, one part


# -- 2 and 4. a binary stream with malformed records interleaved ------------------------------------

# (stream, value, DLQ reason): written into both topics between and after the valid records
MALFORMED = [
    *MALFORMED_CORE,
    ("feedback", b"[1, 2, 3]", "not_object"),
    ("feedback", b'{"ts": 1.0, "correct": true}', "missing_id"),
]


@dataclass
class MixedRun:
    summary: dict[str, Any]
    settings: KafkaSettings
    valid_records: int
    expected: Expected
    sent: Sent  # where -> (key, value, reason)
    letters: list[Any]


@pytest.fixture(scope="module")
def mixed(topics: ModuleTopics, tmp_path_factory: pytest.TempPathFactory) -> MixedRun:
    """Binary packs from `produce --codec binary`, malformed records between and after them, one run."""
    work = tmp_path_factory.mktemp("mixed")
    settings = topics(2)
    sent: Sent = {}
    half = len(MALFORMED) // 2
    first = produce(work, settings, 600, 21, "--codec", "binary", "--pack", "16")
    send_malformed(settings, MALFORMED[:half], 0, sent)
    second = produce(work, settings, 600, 22, "--codec", "binary", "--pack", "16")
    send_malformed(settings, MALFORMED[half:], half, sent)
    assert len(sent) == len(MALFORMED)
    summary = cli(work, settings, *run_args(*IDLE)).ok()
    letters = read_topic(settings, settings.dlq_topic, len(MALFORMED))
    expected = replay(simulate(600, seed=21, **SIM) + simulate(600, seed=22, **SIM), 2, SCHEMA)
    return MixedRun(summary, settings, first["records"] + second["records"], expected, sent, letters)


def test_binary_codec_end_to_end(mixed: MixedRun) -> None:
    s = mixed.summary
    assert mixed.valid_records < 2 * (600 + 600)  # packed: several events per record
    assert s["events_consumed"] == mixed.valid_records + len(MALFORMED)
    assert s["offsets"] == end_offsets(mixed.settings, 2)
    assert_trained_exactly(s, mixed.expected)  # the malformed records cost the valid stream nothing
    # a binary record counts once per event in the breakdown: every event and every malformed record, one part
    events = len(simulate(600, seed=21, **SIM)) + len(simulate(600, seed=22, **SIM))
    assert s["records"]["dead_letter"] == len(MALFORMED)
    assert sum(s["records"].values()) == events + len(MALFORMED) and s["records_from_checkpoint"] == 0


def test_malformed_records_go_to_the_dlq_with_error_headers(mixed: MixedRun) -> None:
    assert mixed.summary["invalid"] == len(MALFORMED)
    assert mixed.summary["dead_letters"] == dict(Counter(reason for _, _, reason in MALFORMED))
    assert len(mixed.letters) == len(MALFORMED)  # each once
    for letter in mixed.letters:
        h = {k: v.decode() for k, v in letter.headers}
        key, value, reason = mixed.sent[(h[H_TOPIC], int(h[H_PARTITION]), int(h[H_OFFSET]))]
        assert (letter.value, letter.key, h[H_ERROR]) == (value, key, reason)  # original bytes, the reason
        assert 0 < len(h[H_DETAIL].encode()) <= 1000


# -- 3. JSON that only follows the README contract --------------------------------------------------

HAND_PREDICTIONS = [
    '{"id": "req-1", "ts": 1764300000.5, "model_version": 3, "features": [0.1, 0.0, 2.5],'
    ' "prediction": "cat", "probs": [0.7, 0.2, 0.1]}',
    '{"id": "req-2", "ts": 1764300001, "features": [1, 2, 3], "prediction": 1, "served_by": "eu-1"}',
    '{"id": "req-3", "ts": 1764300002.0, "features": [1.5, -2, 0.25], "prediction": "bird"}',
    '{"id": "req-6", "ts": 1764300003.0, "features": [0, 1, 0], "prediction": "dog"}',
    '{"id": "req-7", "ts": 1764300004.0, "features": [0, 1, 1], "prediction": "dog"}',  # never judged
]
HAND_EARLY_FEEDBACK = ['{"id": "req-6", "ts": 1764299990.0, "label": 0}']  # written before its prediction
HAND_FEEDBACK = [
    '{"id": "req-1", "ts": 1764300050.0, "correct": false}',
    '{"id": "req-2", "ts": 1764300050.0, "label": "bird", "weight": 2.0}',
    '{"id": "req-3", "ts": 1764300051.0, "correct": true, "comment": "nice"}',
    '{"id": "req-5", "ts": 1764300052.0, "correct": true, "prediction": "dog", "features": [0, 0, 1]}',
    '{"id": "req-8", "ts": 1764300053.0, "label": "cat", "features": [1, 0, 0]}',
    '{"id": "req-9", "ts": 1764300054.0, "correct": false, "prediction": 2, "features": [0.5, 0.5, 0.5]}',
]
# id -> polarity of the one example it teaches
HAND_EXAMPLES = {"req-1": "negative", "req-2": "positive", "req-3": "positive", "req-5": "positive",
                 "req-6": "positive", "req-8": "positive", "req-9": "negative"}


def test_hand_built_contract_json_trains(kafka_topics: TopicFactory, tmp_path: Path) -> None:
    """A producer that knows only the README: JSON text, key = id, the client's own partitioner."""
    settings = kafka_topics(partitions=2)
    partition: dict[str, int] = {}
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    try:
        for topic, texts in ((settings.feedback_topic, HAND_EARLY_FEEDBACK),
                             (settings.predictions_topic, HAND_PREDICTIONS),
                             (settings.feedback_topic, HAND_FEEDBACK)):
            for text in texts:
                ident = json.loads(text)["id"]
                meta = producer.send(topic, value=text.encode(), key=ident.encode()).get(timeout=30)
                assert partition.setdefault(ident, meta.partition) == meta.partition  # co-partitioned by key
    finally:
        producer.close()

    s = cli(tmp_path, settings, *run_args("--classes", "cat,dog,bird", "--n-features", "3", *IDLE)).ok()
    records = len(HAND_PREDICTIONS) + len(HAND_EARLY_FEEDBACK) + len(HAND_FEEDBACK)
    assert (s["events_consumed"], s["invalid"]) == (records, 0)
    assert s["offsets"] == end_offsets(settings, 2)
    lineage = Counter((partition[i], pol) for i, pol in HAND_EXAMPLES.items())
    assert_trained_exactly(s, Expected(lineage, duplicates=0))


# -- 5. checkpoint, restore, lineage, predict --------------------------------------------------------


def test_second_run_restores_and_the_checkpoint_predicts(shared: Stream, tmp_path: Path) -> None:
    ckdir = tmp_path / "ck"
    small_polls = {"STREAMLEARN_MAX_RECORDS": "250"}  # so --max-events stops well before the end
    first = cli(tmp_path, shared.settings, *run_args("--checkpoint-dir", str(ckdir), "--max-events", "3000"),
                env=small_polls).ok()
    assert first["stop_reason"] == "max_events"
    assert first["restored_from"] is None and first["checkpoints"] >= 1
    assert first["events_consumed"] == 3000  # queued steps never poll past what is left
    assert (first["model_examples_positive"], first["model_examples_negative"]) == \
        (first["examples_positive"], first["examples_negative"])
    newest = checkpoints(ckdir)[-1]

    second = cli(tmp_path, shared.settings, *run_args("--checkpoint-dir", str(ckdir), *IDLE), env=small_polls).ok()
    assert second["restored_from"] == str(newest)
    assert first["events_consumed"] + second["events_consumed"] == shared.records  # only the rest
    assert second["offsets"] == end_offsets(shared.settings, 2)
    assert first["invalid"] == second["invalid"] == 0
    exp = shared.expected
    assert first["examples_positive"] + second["examples_positive"] == exp.positive
    assert first["examples_negative"] + second["examples_negative"] == exp.negative
    assert first["duplicates"] + second["duplicates"] == exp.duplicates
    # the model's lineage covers both runs
    assert (second["model_examples_positive"], second["model_examples_negative"]) == (exp.positive, exp.negative)
    assert second["model_examples_by_partition"] == exp.by_partition

    digit = [0, 0, 5, 13, 9, 1, 0, 0] * 8
    lines = [
        json.dumps({"features": [0.0] * 64}),
        json.dumps({"features": digit}),
        "this is not json",
        "",  # blank lines are skipped
        json.dumps({"features": [1.0, 2.0]}),  # wrong width
        json.dumps({"id": "q-1", "features": [16 - v for v in digit]}),  # unknown keys are ignored
        "[1, 2, 3]",
    ]
    done = cli(tmp_path, None, "predict", "--checkpoint-dir", str(ckdir), stdin="\n".join(lines) + "\n",
               timeout=120)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 2, 3, 5, 6, 7]  # one answer per non-blank input line
    for o in out:
        if o["line"] in (3, 5, 7):
            assert set(o) == {"line", "error"} and o["error"]
            continue
        assert o["class"] in SCHEMA.classes and o["class"] == SCHEMA.classes[o["prediction"]]
        assert len(o["probs"]) == SCHEMA.n_classes and min(o["probs"]) >= 0
        assert sum(o["probs"]) == pytest.approx(1.0, abs=1e-4)
        assert o["probs"][o["prediction"]] == max(o["probs"])


# -- 6. refusals ---------------------------------------------------------------------------------------


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-4000:]
    assert len(lines) == 1 and lines[0].startswith("streamlearn: error: "), stderr[-4000:]
    return lines[0]


def test_run_refuses_topics_with_different_partition_counts(kafka_topics: TopicFactory, tmp_path: Path) -> None:
    settings = kafka_topics(partitions=2)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        admin.create_partitions({settings.feedback_topic: NewPartitions(total_count=3)})
    finally:
        admin.close()
    done = cli(tmp_path, settings, *run_args(*IDLE), timeout=120)
    assert done.returncode == 2, done.stderr[-4000:]
    line = _one_error_line(done.stderr)
    assert settings.predictions_topic in line and settings.feedback_topic in line
    counts = line.replace(settings.predictions_topic, "").replace(settings.feedback_topic, "")
    assert re.search(r"\b2\b", counts) and re.search(r"\b3\b", counts), line


@pytest.mark.parametrize(("flags", "names"), [
    (("--workers", "0"), "workers"),
    (("--ps-mode", "fast"), "ps.mode|ps-mode"),
    (("--max-seconds", "nan", "--until-idle", "2"), "max.seconds"),  # nan would never stop the job
])
def test_run_rejects_a_bad_flag_value_in_one_line(kafka_topics: TopicFactory, tmp_path: Path,
                                                  flags: tuple[str, ...], names: str) -> None:
    settings = kafka_topics(partitions=2)  # real, empty topics: only the flag is wrong
    done = cli(tmp_path, settings, "run", "--ray-num-cpus", "2", *flags, timeout=120)
    assert done.returncode == 2, f"exit {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    assert re.search(names, _one_error_line(done.stderr))
    assert done.stdout == ""


# -- 7. SIGTERM: checkpoint, summary, exit 0; the next run resumes ----------------------------------------


def test_sigterm_checkpoints_and_the_next_run_resumes(kafka_topics: TopicFactory, tmp_path: Path) -> None:
    settings = kafka_topics(partitions=2)
    early, late = simulate(400, seed=31, **SIM), simulate(1500, seed=32, **SIM)
    early_records = produce_stream(settings, early)["records"]
    ckdir = tmp_path / "ck"
    job = Cli(tmp_path, settings, *run_args("--checkpoint-dir", str(ckdir)))  # no stop condition
    with ThreadPoolExecutor(1) as pool:
        try:
            wait_until("run consumes", lambda: progress_records(job.stderr()) > 0)
            producing = pool.submit(produce_stream, settings, late, rate=300.0)  # ~10 s of events
            # the job is reading the topics while they are produced into
            wait_until("run reads new records", lambda: progress_records(job.stderr()) > early_records)
            job.signal(signal.SIGTERM)
            stopped = job.wait().ok()
        finally:
            job.kill()
        late_records = producing.result(timeout=120)["records"]
    assert stopped["stop_reason"] == "SIGTERM"
    assert stopped["checkpoints"] >= 1
    newest = checkpoints(ckdir)[-1]
    total = early_records + late_records
    assert early_records < stopped["events_consumed"] <= total

    resumed = cli(tmp_path, settings, *run_args("--checkpoint-dir", str(ckdir), *IDLE)).ok()
    assert resumed["restored_from"] == str(newest)
    assert stopped["events_consumed"] + resumed["events_consumed"] == total
    assert resumed["offsets"] == end_offsets(settings, 2)
    exp = replay(early + late, 2, SCHEMA)
    assert stopped["examples_positive"] + resumed["examples_positive"] == exp.positive
    assert stopped["examples_negative"] + resumed["examples_negative"] == exp.negative
    assert (resumed["model_examples_positive"], resumed["model_examples_negative"]) == (exp.positive, exp.negative)
    assert resumed["model_examples_by_partition"] == exp.by_partition


# -- a user's own stream: forgotten flags, a different partitioner --------------------------------


def send_named(settings: KafkaSettings, events: list[Any], feedback_partition: Any = None,
               partitions: int = 2) -> None:
    """JSON with named classes, key = id, the Java client's partitioner (kafka-python's default, murmur2); the
    feedback by ``feedback_partition(key, partitions)`` if given."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5)
    try:
        for ev in events:
            pred = isinstance(ev, Prediction)
            key = ev.id.encode()
            part = None if pred or feedback_partition is None else feedback_partition(key, partitions)
            producer.send(settings.predictions_topic if pred else settings.feedback_topic, value=as_json(ev),
                          key=key, partition=part)
        producer.flush(60)
    finally:
        producer.close()


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("run: WARNING: ")]


def test_forgetting_n_features_and_classes_says_where_the_records_went(kafka_topics: TopicFactory,
                                                                       tmp_path: Path) -> None:
    """An 8-feature stream with named classes, run without --n-features / --classes (64 and 10 by default)."""
    settings = kafka_topics(partitions=2)
    events = named_stream(1000)
    send_named(settings, events)
    labelled = sum(1 for ev in events if isinstance(ev, Feedback) and ev.label is not None)
    done = cli(tmp_path, settings, *run_args(*IDLE))
    s = done.ok()
    assert s["events_consumed"] == sum(s["records"].values()) == 2000
    assert s["dead_letters"] == {"bad_dense_length": 1000, "unknown_class": labelled}
    # the correct/wrong feedback waited for predictions that went to the dead letters: pending, not nowhere
    assert s["records"]["pending"] == 1000 - labelled and s["records"]["example"] == 0
    *early, said = [line for line in warning_lines(done.stderr) if "dead letters" in line]
    assert len(early) <= 1  # said while running once the share was clear (the shares then differ), and last
    assert f"{1000 + labelled} of 2000 records" in said and settings.dlq_topic in said
    assert f"bad_dense_length 1000, unknown_class {labelled}" in said
    assert "--classes and --n-features match" in said
    assert done.stderr.rstrip().endswith(said)  # the last thing on stderr
    assert s["warnings"] == [said.removeprefix("run: WARNING: ")]


def test_feedback_partitioned_by_another_hash_is_warned_about(kafka_topics: TopicFactory, tmp_path: Path) -> None:
    """Predictions by murmur2, feedback by CRC32 (librdkafka's default): most pairs never meet."""
    settings = kafka_topics(partitions=4)
    events = named_stream(1000)
    send_named(settings, events, crc32_partition, 4)
    met = sum(1 for ev in events if isinstance(ev, Feedback)
              and crc32_partition(ev.id.encode(), 4) == partition_for(ev.id.encode(), 4))
    done = cli(tmp_path, settings, *run_args("--classes", ",".join(NAMES), "--n-features", "8", *IDLE))
    s = done.ok()
    assert (s["invalid"], s["join_hit_rate"]) == (0, round(met / 1000, 4)) and met < 500
    assert s["records"]["example"] == 2 * met and sum(s["records"].values()) == 2000
    *early, said = warning_lines(done.stderr)
    assert len(early) <= 1
    assert f"only {met} of 1000 feedback events" in said and "partitioner=murmur2_random" in said
