"""`produce --from FILE` end to end: a CSV of features and labels becomes keyed, co-partitioned prediction and
feedback events that `run` learns from, and the checkpoint then predicts the file's classes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from kafka_helpers import TopicFactory
from run_helpers import cli, end_offsets, read_topic, run_args

from streamlearn.kafka import partition_for

pytestmark = pytest.mark.kafka

CENTRES = {"cat": (4.0, 0.0), "dog": (-4.0, 4.0), "bird": (0.0, -4.0)}  # three blobs far apart
ROWS = 600


def write_csv(path: Path) -> None:
    rng = random.Random(7)
    lines = ["id,x,y,label"]
    for i in range(ROWS):
        name = rng.choice(sorted(CENTRES))
        cx, cy = CENTRES[name]
        lines.append(f"req-{i},{cx + rng.gauss(0, 1):.4f},{cy + rng.gauss(0, 1):.4f},{name}")
    lines.insert(10, "req-bad,1.0,not-a-number,cat")  # line 11 of the file
    path.write_text("\n".join(lines) + "\n")


def test_a_csv_is_produced_keyed_by_id_and_a_run_learns_from_it(kafka_topics: TopicFactory, tmp_path: Path) -> None:
    settings = kafka_topics(partitions=2)
    data = tmp_path / "animals.csv"
    write_csv(data)

    refused = cli(tmp_path, settings, "produce", "--from", str(data), "--id-column", "id")
    assert refused.returncode == 2 and f"{data} line 11: feature 'y' is not a number" in refused.stderr
    assert set(end_offsets(settings, 2).values()) == {0}  # nothing written

    done = cli(tmp_path, settings, "produce", "--from", str(data), "--id-column", "id", "--skip-bad-rows").ok()
    assert (done["predictions"], done["feedback"], done["rows"], done["bad_rows"]) == (ROWS, ROWS, ROWS, 1)
    assert done["bad_lines"] == [11]

    # both events of an id in the partition the Java client's murmur2 partitioner gives its key
    for topic in (settings.predictions_topic, settings.feedback_topic):
        records = read_topic(settings, topic, ROWS)
        assert len(records) == ROWS
        for rec in records:
            assert rec.partition == partition_for(rec.key, 2) and json.loads(rec.value)["id"] == rec.key.decode()

    ckdir = tmp_path / "ck"
    s = cli(tmp_path, settings, *run_args("--classes", "bird,cat,dog", "--n-features", "2", "--checkpoint-dir",
                                          str(ckdir), "--until-idle", "3", workers=1)).ok()
    assert (s["events_consumed"], s["invalid"], s["duplicates"], s["expired"]) == (2 * ROWS, 0, 0, 0)
    assert (s["examples_positive"], s["examples_negative"]) == (ROWS, 0)  # every label a positive example
    assert s["progressive_accuracy"] > 0.8

    centres = "".join(json.dumps({"features": list(xy)}) + "\n" for xy in CENTRES.values())
    answer = cli(tmp_path, None, "predict", "--checkpoint-dir", str(ckdir), stdin=centres, timeout=120)
    assert answer.returncode == 0, answer.stderr
    classes = [json.loads(line)["class"] for line in answer.stdout.splitlines() if line.startswith('{"line"')]
    assert classes == list(CENTRES)


def test_the_readme_producer_keys_and_partitions_as_streamlearn_does(kafka_topics: TopicFactory) -> None:
    """The README's producer, run as written (broker and topics swapped): both events in the murmur2 partition."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Bring your own data", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    settings = kafka_topics(partitions=4)
    code = (code.replace("127.0.0.1:9092", settings.bootstrap_servers)
            .replace('"streamlearn.predictions"', repr(settings.predictions_topic))
            .replace('"streamlearn.feedback"', repr(settings.feedback_topic)))
    exec(compile(code, "README.md", "exec"), {})
    for topic in (settings.predictions_topic, settings.feedback_topic):
        (rec,) = read_topic(settings, topic, 1)
        assert rec.key == b"req-41" and rec.partition == partition_for(b"req-41", 4)  # CRC32 would give 3
