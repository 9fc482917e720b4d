"""Throughput of ``streamlearn run`` on a foreign stream, beside both clients' consume ceilings on the same topics.

The stream is written by kcat, not by streamlearn: digits predictions and their feedback as contract-v1 JSON,
keyed by id (murmur2, the Java client's partitioner), into two fresh topics of ``--partitions`` partitions. Then,
in one run, each row reads all of it from offset 0 and prints one JSON line:

* ``ceiling_kafka_python`` -- a bare kafka-python loop over both topics (public API: ``poll``, no CRC checks);
* ``ceiling_confluent`` -- a bare confluent-kafka loop (``consume(num_messages=10000)``);
* ``run_1w`` / ``run_2w`` -- ``streamlearn run --workers N --until-idle 2`` as a user runs it (its default
  client), rate = events consumed / seconds working (the summary's ``working_seconds``: the idle wait at the end
  excluded); ``run_2w_kafka_python`` with ``--kafka-client kafka-python`` where that flag exists.

Each row's ``ratio_kafka_python`` and ``ratio_confluent`` divide its rate by the ceilings of the same run.

    python benchmarks/foreign_stream.py                       # starts a local broker (deploy/kafka/local.sh)
    python benchmarks/foreign_stream.py --predictions 300000 --repeats 2 --out benchmarks/results/foreign_stream
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOCAL_KAFKA = ROOT / "deploy" / "kafka" / "local.sh"


def write_stream(directory: Path, predictions: int, seed: int) -> tuple[Path, Path, int]:
    """Digits events as ``key<TAB>json`` lines, one file per topic; returns the files and the event count."""
    from streamlearn.codec import encode_json
    from streamlearn.events import Prediction
    from streamlearn.simulate import DataConfig, SimConfig, Simulator

    sim = Simulator(SimConfig(events=predictions, seed=seed), DataConfig("digits"))
    pred_file, fb_file = directory / "predictions.tsv", directory / "feedback.tsv"
    n = 0
    with pred_file.open("wb") as pf, fb_file.open("wb") as ff:
        for ev in sim.events():
            out = pf if isinstance(ev, Prediction) else ff
            out.write(ev.id.encode() + b"\t" + encode_json(ev) + b"\n")
            n += 1
    return pred_file, fb_file, n


def kcat_produce(bootstrap: str, topic: str, file: Path) -> None:
    subprocess.run(["kcat", "-P", "-b", bootstrap, "-t", topic, "-K", "\t",
                    "-X", "topic.partitioner=murmur2_random", "-l", str(file)], check=True, timeout=600)


def create_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
    finally:
        admin.close()


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics(topics)
    finally:
        admin.close()


def ceiling_kafka_python(bootstrap: str, topics: list[str], partitions: int, total: int) -> dict[str, Any]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, check_crcs=False,
                             auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20)
    consumer.assign([TopicPartition(t, p) for t in topics for p in range(partitions)])
    n, start, deadline = 0, time.perf_counter(), time.monotonic() + 600
    while n < total and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500, max_records=10000).values():
            n += len(records)
    seconds = time.perf_counter() - start
    consumer.close()
    return {"records": n, "seconds": round(seconds, 3), "events_per_second": round(n / seconds)}


def ceiling_confluent(bootstrap: str, topics: list[str], partitions: int, total: int) -> dict[str, Any]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(partitions)])
    n, start, deadline = 0, time.perf_counter(), time.monotonic() + 600
    while n < total and time.monotonic() < deadline:
        n += sum(1 for m in consumer.consume(num_messages=10000, timeout=0.5) if m.error() is None)
    seconds = time.perf_counter() - start
    consumer.close()
    return {"records": n, "seconds": round(seconds, 3), "events_per_second": round(n / seconds)}


def streamlearn_run(bootstrap: str, topics: list[str], workers: int, until_idle: float,
                    extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "streamlearn.cli", "run", "--bootstrap-servers", bootstrap,
           "--predictions-topic", topics[0], "--feedback-topic", topics[1], "--dlq-topic", topics[2],
           "--group-id", f"bench-{uuid.uuid4().hex[:8]}", "--classes", "10", "--n-features", "64",
           "--workers", str(workers), "--until-idle", str(until_idle), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"streamlearn run exited {proc.returncode}: {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    events = int(summary["events_consumed"])
    working = summary.get("working_seconds")
    if working is None:  # a summary without it: its seconds include the idle wait at the end
        working = float(summary["seconds"]) - until_idle
    return {"records": events, "seconds": round(float(working), 3), "events_per_second": round(events / working),
            "wall_seconds": summary["seconds"], "examples": summary["examples_positive"]
            + summary["examples_negative"], "expired": summary["expired"], "invalid": summary["invalid"],
            "stop_reason": summary["stop_reason"]}


def has_flag(flag: str) -> bool:
    out = subprocess.run([sys.executable, "-m", "streamlearn.cli", "run", "--help"], capture_output=True,
                         text=True, timeout=120).stdout
    return flag in out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap-servers", help="an existing broker (default: start deploy/kafka/local.sh)")
    ap.add_argument("--broker-port", type=int, default=19092, help="port of the broker this starts")
    ap.add_argument("--predictions", type=int, default=300_000)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of every row, interleaved")
    ap.add_argument("--rows", default="ceiling_kafka_python,ceiling_confluent,run_1w,run_2w,run_2w_kafka_python")
    ap.add_argument("--until-idle", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write PREFIX.jsonl")
    args = ap.parse_args()

    bootstrap = args.bootstrap_servers
    started = False
    if bootstrap is None:
        broker = [str(LOCAL_KAFKA), "start", "--port", str(args.broker_port)]
        out = subprocess.run(broker, capture_output=True, text=True, check=True, timeout=300).stdout
        bootstrap = out.strip().splitlines()[-1]
        started = True
    tag = uuid.uuid4().hex[:8]
    topics = [f"bench-{tag}-predictions", f"bench-{tag}-feedback", f"bench-{tag}-dlq"]
    rows = args.rows.split(",")
    if "run_2w_kafka_python" in rows and not has_flag("--kafka-client"):
        rows.remove("run_2w_kafka_python")
    lines: list[dict[str, Any]] = []
    try:
        create_topics(bootstrap, topics, args.partitions)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            pred_file, fb_file, total = write_stream(Path(tmp), args.predictions, args.seed)
            kcat_produce(bootstrap, topics[0], pred_file)
            kcat_produce(bootstrap, topics[1], fb_file)
            print(f"foreign_stream: {total} events produced by kcat in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
        for rnd in range(args.repeats):
            measured: dict[str, dict[str, Any]] = {}
            for row in rows:
                if row == "ceiling_kafka_python":
                    m = ceiling_kafka_python(bootstrap, topics[:2], args.partitions, total)
                elif row == "ceiling_confluent":
                    m = ceiling_confluent(bootstrap, topics[:2], args.partitions, total)
                else:
                    workers = 2 if row.startswith("run_2w") else 1
                    extra = ["--kafka-client", "kafka-python"] if row.endswith("kafka_python") else []
                    m = streamlearn_run(bootstrap, topics, workers, args.until_idle, extra)
                measured[row] = m
                print(f"foreign_stream: round {rnd} {row}: {m['events_per_second']} events/s", file=sys.stderr)
            for row, m in measured.items():
                line = {"bench": "foreign_stream", "round": rnd, "row": row, "events": total,
                        "partitions": args.partitions, **m}
                for ceiling in ("kafka_python", "confluent"):
                    c = measured.get(f"ceiling_{ceiling}")
                    if c:
                        line[f"ratio_{ceiling}"] = round(m["events_per_second"] / c["events_per_second"], 3)
                line["machine"] = f"{platform.machine()} {os.cpu_count()} cores"
                line["date"] = time.strftime("%Y-%m-%d")
                lines.append(line)
                print(json.dumps(line), flush=True)
    finally:
        try:
            delete_topics(bootstrap, topics)
        finally:
            if started:
                stop = [str(LOCAL_KAFKA), "stop", "--port", str(args.broker_port), "--purge"]
                subprocess.run(stop, capture_output=True, timeout=120)
    if args.out:
        Path(f"{args.out}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


if __name__ == "__main__":
    main()
