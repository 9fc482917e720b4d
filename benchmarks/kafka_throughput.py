"""Kafka ingest throughput: how close KafkaSource (+ decode + join) gets to the clients' raw consume loops.

For each codec, the simulated stream is produced ONCE to fresh uuid-named
topics; then every row reads ALL of it from offset 0 and prints one JSON line:

    {"bench": "kafka_throughput", "codec": ..., "row": ..., "events": ..., "records": ...,
     "seconds": ..., "events_per_second": ..., "ratio_to_raw": ...}

``ratio_to_raw`` divides by the ``raw`` row: a bare kafka-python consume loop
with the same consumer settings as KafkaSource (its public-API ceiling);
``raw_confluent`` is librdkafka's (confluent-kafka ``consume(num_messages=...)``).
``source`` reads through KafkaSource on the default client (confluent when
installed), ``source_kafka_python`` on kafka-python. Rows are plain functions
``row_x(bench) -> Measured`` listed in ROWS.

End-to-end rows (the issue "Kafka ingestion"):

* ``source_ingest_2p`` -- source_ingest in two processes at once, each on
  half of the partitions: what two workers could ingest if learning were
  free, with the broker on the same two cores.
* ``learn_in_process`` -- KafkaSource + Ingest + Learner.learn_batches in this one
  process, no Ray: the single-process learning ceiling. Its ``stages`` field
  gives microseconds per event for poll, decode, join and learn (featurize,
  gradients and optimizer steps of a group of micro-batches: one compiled call
  for the linear model), each timed around its own calls.
* ``job_1w`` / ``job_2w`` (and ``job_2w_b32``, micro-batch 32) -- what ``streamlearn run`` does: a
  :class:`streamlearn.job.Job` (Kafka source, async parameter server,
  defaults otherwise) on a local Ray started once. Throughput excludes Ray
  and actor start: the window runs from every actor being constructed
  (consumer connected) to the driver receiving the last step result
  that consumed records (see benchmarks/harness.py).
  ``wall_seconds_incl_ray_actor_start`` is Job.run() as a whole.

``--profile`` adds a py-spy run of ``job_1w`` (JSON) and prints where the
worker actor's task thread spends its wall time and the parameter server's
and driver's hottest functions (CPU time). The job must outlast the profile:
use enough ``--events``. The default, 600,000, gives the job rows windows of
3-10 s: at 100,000 a 2-worker window lasted under a second and measured
0.53 of raw where 600,000 measured 0.66 (the same code, 2026-11-28).

    python benchmarks/kafka_throughput.py                      # starts and stops a local broker
    python benchmarks/kafka_throughput.py --bootstrap-servers 127.0.0.1:9092 --events 200000
    python benchmarks/kafka_throughput.py --codec json --rows raw,job_1w --profile

Events are counted as predictions + feedback. The topics are deleted after.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import harness
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from streamlearn.codec import decode
from streamlearn.events import Feedback, Schema
from streamlearn.ingest import Ingest
from streamlearn.join import Joiner
from streamlearn.kafka import KafkaSettings, KafkaSource, SourceConfig, create_topics, produce_stream
from streamlearn.learner import Learner, OptimConfig
from streamlearn.model import ModelConfig
from streamlearn.objective import Objective
from streamlearn.ps import PSConfig
from streamlearn.simulate import DataConfig, SimConfig, Simulator
from streamlearn.source import Record
from streamlearn.worker import tune_gc

BATCH = 5000  # records per next_batch / poll


@dataclass
class Bench:
    settings: KafkaSettings
    codec: str
    partitions: int
    events: int  # predictions + feedback in the topics
    records: int  # Kafka records in the topics (fewer than events when binary packs them)
    schema: Schema


@dataclass
class Measured:
    events: int
    records: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)  # row-specific fields, printed as they are


def _tps(b: Bench) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t in (b.settings.predictions_topic, b.settings.feedback_topic)
            for p in range(b.partitions)]


def _raw_loop(b: Bench, **config: object) -> Measured:
    consumer = KafkaConsumer(**b.settings.kafka_python_kwargs(), enable_auto_commit=False,
                             auto_offset_reset="earliest", **config)
    try:
        consumer.assign(_tps(b))
        for tp, offset in consumer.beginning_offsets(_tps(b)).items():  # as KafkaSource does, off the clock
            consumer.seek(tp, offset)
        n = 0
        start = time.perf_counter()
        while n < b.records:
            for recs in consumer.poll(timeout_ms=500, max_records=BATCH).values():
                n += len(recs)
        seconds = time.perf_counter() - start
    finally:
        consumer.close(autocommit=False)
    return Measured(b.events, n, seconds)


def row_raw(b: Bench) -> Measured:
    """The ceiling the issue names: kafka-python's poll loop, touching nothing, with KafkaSource's consumer
    settings."""
    cfg = SourceConfig()
    return _raw_loop(b, fetch_max_bytes=cfg.fetch_max_bytes,
                     max_partition_fetch_bytes=cfg.max_partition_fetch_bytes, check_crcs=cfg.check_crcs,
                     metrics_enabled=False)


def row_raw_confluent(b: Bench) -> Measured:
    """librdkafka's ceiling: confluent-kafka's consume(num_messages=10000) loop, touching nothing."""
    from confluent_kafka import Consumer
    from confluent_kafka import TopicPartition as Tp

    cfg = SourceConfig()
    consumer = Consumer({**b.settings.librdkafka_config(), "group.id": b.settings.group_id,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.max.bytes": cfg.fetch_max_bytes, "receive.message.max.bytes": cfg.fetch_max_bytes + 512,
                         "max.partition.fetch.bytes": cfg.max_partition_fetch_bytes, "fetch.wait.max.ms": 10})
    try:
        consumer.assign([Tp(tp.topic, tp.partition, -2) for tp in _tps(b)])  # -2: the beginning
        n = 0
        start = time.perf_counter()
        while n < b.records:
            n += sum(1 for m in consumer.consume(num_messages=10_000, timeout=0.5) if m.error() is None)
        seconds = time.perf_counter() - start
    finally:
        consumer.close()
    return Measured(b.events, n, seconds)


def row_raw_defaults(b: Bench) -> Measured:
    """kafka-python out of the box (pure-Python CRC checks and client metrics on), for context."""
    return _raw_loop(b)


def _source(b: Bench) -> KafkaSource:
    return _source_of(b, list(range(b.partitions)))


def _source_of(b: Bench, partitions: list[int]) -> KafkaSource:
    return KafkaSource(b.settings, partitions)  # connects and resolves offsets, off the clock


def row_source(b: Bench) -> Measured:
    """KafkaSource.next_batch on the default client: Records, read-ahead and positions over the client."""
    return _source_rate(b, _source(b))


def row_source_kafka_python(b: Bench) -> Measured:
    """KafkaSource.next_batch on kafka-python (``--kafka-client kafka-python``)."""
    settings = dataclasses.replace(b.settings, client="kafka-python")
    return _source_rate(b, KafkaSource(settings, list(range(b.partitions))))


def _source_rate(b: Bench, source: KafkaSource) -> Measured:
    try:
        n = 0
        start = time.perf_counter()
        while n < b.records:
            n += len(source.next_batch(BATCH))
        seconds = time.perf_counter() - start
    finally:
        source.close()
    return Measured(b.events, n, seconds)


def row_source_ingest(b: Bench) -> Measured:
    """KafkaSource + Ingest: consume, decode, join into examples (what a worker does before learning)."""
    source, ingest = _source(b), Ingest(b.schema)
    try:
        n = examples = 0
        start = time.perf_counter()
        while n < b.records:
            recs = source.next_batch(BATCH)
            n += len(recs)
            examples += len(ingest.process(recs).examples)
        seconds = time.perf_counter() - start
    finally:
        source.close()
    assert examples == b.events // 2, f"{examples} examples from {b.events} events"
    return Measured(b.events, n, seconds)


def _ingest_share(b: Bench, owned: list[int], start: Any, out: Any) -> None:
    """One process of source_ingest_2p: consume, decode and join ``owned`` partitions to their end."""
    tune_gc()
    source, ingest = _source_of(b, owned), Ingest(b.schema)
    want = 2 * len(owned)  # (topic, partition) pairs
    try:
        start.wait()
        n = examples = 0
        t0 = time.monotonic()
        while True:
            recs = source.next_batch(BATCH)
            n += len(recs)
            examples += len(ingest.process(recs).examples)
            lag = source.lag()
            if len(lag) == want and not any(lag.values()):
                break
        out.put((n, examples, t0, time.monotonic()))
    finally:
        source.close()


def row_source_ingest_2p(b: Bench) -> Measured:
    """source_ingest in 2 processes at once, each owning half the partitions: the ingest ceiling of a
    2-worker job on this machine (no learning, no Ray), next to the raw loop's single consumer."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(3), ctx.Queue()
    halves = [list(range(b.partitions))[i::2] for i in range(2)]
    procs = [ctx.Process(target=_ingest_share, args=(b, h, start, out)) for h in halves]
    for proc in procs:
        proc.start()
    start.wait(timeout=120)  # both connected: the clock starts
    got = [out.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    n, examples = sum(g[0] for g in got), sum(g[1] for g in got)
    assert examples == b.events // 2, f"{examples} examples from {b.events} events"
    seconds = max(g[3] for g in got) - min(g[2] for g in got)
    return Measured(b.events, n, seconds, {"processes": len(procs)})


def row_ingest_in_memory(b: Bench) -> Measured:
    """Ingest alone over Records already in memory: the decode + join ceiling without any Kafka."""
    source = _source(b)
    records: list[Record] = []
    try:
        while len(records) < b.records:
            records += source.next_batch(BATCH)
    finally:
        source.close()
    ingest = Ingest(b.schema)
    start = time.perf_counter()
    for i in range(0, len(records), BATCH):
        ingest.process(records[i : i + BATCH])
    return Measured(b.events, len(records), time.perf_counter() - start)


GROUP = PSConfig().grads_per_push  # micro-batches a worker learns in one call, at least (64)


def row_learn_in_process(b: Bench) -> Measured:
    """Consume, decode, join and learn in this one process (no Ray), each stage timed on its own; learning
    (featurize, gradients, optimizer steps) is one stage, as the compiled path does them in one call."""
    source = _source(b)
    learner = Learner(ModelConfig(n_features=b.schema.n_features, n_classes=b.schema.n_classes), Objective(),
                      OptimConfig())
    joiners: dict[int, Joiner] = {}
    size = learner.optim_cfg.batch_size
    learner.warm_up()
    t: dict[str, float] = dict.fromkeys(("poll", "decode", "join", "learn"), 0.0)
    clock = time.perf_counter
    buffer: list[Any] = []
    try:
        n = 0
        start = clock()
        while n < b.records:
            t0 = clock()
            recs = source.next_batch(BATCH)
            t1 = clock()
            events = [(r.partition, decode(r.value, r.kind, b.schema)) for r in recs]
            t2 = clock()
            for part, evs in events:
                j = joiners.get(part) or joiners.setdefault(part, Joiner(partition=part))
                for ev in evs:
                    ex = j.add_feedback(ev) if isinstance(ev, Feedback) else j.add_prediction(ev)
                    if ex is not None:
                        buffer.append(ex)
            t3 = clock()
            t["poll"] += t1 - t0
            t["decode"] += t2 - t1
            t["join"] += t3 - t2
            full = len(buffer) // size * size  # every full micro-batch, in groups of a push's worth (64), as a worker
            batches = [buffer[i : i + size] for i in range(0, full, size)]
            buffer = buffer[full:]
            a = clock()
            for i in range(0, len(batches), GROUP):
                learner.learn_batches(batches[i : i + GROUP])
            t["learn"] += clock() - a
            n += len(recs)
        seconds = clock() - start
    finally:
        source.close()
    stages = {k: round(v / b.events * 1e6, 2) for k, v in t.items()}  # microseconds per event
    stages["other"] = round((seconds - sum(t.values())) / b.events * 1e6, 2)
    return Measured(b.events, n, seconds, {"stages_us_per_event": stages})


def _job(b: Bench, workers: int, batch_size: int | None = None) -> Measured:
    cfg = harness.job_config(_topics(b), workers=workers, classes=b.schema.n_classes,
                             n_features=b.schema.n_features, batch_size=batch_size)
    run = harness.run_job(cfg, _topics(b))
    s = run.summary
    complete = s["events_consumed"] == b.records
    return Measured(run.events, b.records if complete else s["events_consumed"], run.seconds, {
        "job_summary_events_per_second": s["events_per_second"],
        "wall_seconds_incl_ray_actor_start": round(run.wall_seconds, 2), "push_fraction": s["push_fraction"],
        "peak_rss_mb": harness.mb(run.peak_rss_job), "peak_rss_ray_mb": harness.mb(run.peak_rss_ray),
        "micro_batch": cfg.optim.batch_size,
        "heldout_accuracy": harness.heldout_accuracy(cfg.model, run.weights, DataConfig()),
        "complete": complete, "stop_reason": s["stop_reason"]})


def _topics(b: Bench) -> harness.Topics:
    t = harness.Topics(b.settings, b.codec, b.partitions)
    t.predictions, t.feedback, t.records = b.events // 2, b.events - b.events // 2, b.records
    return t


def row_job_1w(b: Bench) -> Measured:
    """streamlearn run with 1 worker (async PS, 1 shard): steady-state window, Ray start excluded."""
    return _job(b, 1)


def row_job_2w(b: Bench) -> Measured:
    """streamlearn run with 2 workers (async PS, 1 shard)."""
    return _job(b, 2)


def row_job_2w_b32(b: Bench) -> Measured:
    """streamlearn run with 2 workers, ``--batch-size 32 --grads-per-push 8``: the throughput setting (8x fewer
    optimizer steps per event than the default 4, at some sample efficiency: see the README)."""
    return _job(b, 2, batch_size=32)


ROWS: list[Callable[[Bench], Measured]] = [row_raw, row_raw_defaults, row_raw_confluent, row_source,
                                           row_source_kafka_python, row_source_ingest,
                                           row_source_ingest_2p,
                                           row_ingest_in_memory, row_learn_in_process, row_job_1w, row_job_2w,
                                           row_job_2w_b32]


def profile_job(b: Bench, seconds: float) -> dict[str, Any]:
    """py-spy on a 1-worker job's worker and parameter-server actors while it runs (not a timed row)."""
    cfg = harness.job_config(_topics(b), workers=1, classes=b.schema.n_classes, n_features=b.schema.n_features)
    run = harness.run_job(cfg, _topics(b), profile=seconds)
    return {**run.profile, "events_per_second": round(run.events_per_second),
            "push_fraction": run.summary["push_fraction"]}


# ---------------------------------------------------------------------------


EMITTED: list[dict[str, Any]] = []


def _emit(line: dict[str, Any]) -> None:
    EMITTED.append(line)
    print(json.dumps(line), flush=True)


def render(lines: list[dict[str, Any]], command: str) -> str:
    """The rows as a Markdown table, then the stage split and the py-spy profile."""
    out = [f"Kafka ingestion, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; `{command}`", "",
           "| codec | row | events/s | x raw | runs (events/s) | push_fraction | peak RSS MB | held-out acc |",
           "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in lines:
        if "events_per_second" not in r or "profile" in str(r["row"]):
            continue
        runs = ", ".join(f"{x:,}" for x in r.get("all_events_per_second", []))
        ratio = r.get("ratio_to_raw")
        out.append(f"| {r['codec']} | {r['row']} | {r['events_per_second']:,} | "
                   f"{'' if ratio is None else ratio} | {runs} | {r.get('push_fraction', '')} | "
                   f"{r.get('peak_rss_mb', '')} | {r.get('heldout_accuracy', '')} |")
    for r in lines:
        if "stages_us_per_event" in r:
            st = r["stages_us_per_event"]
            out += ["", f"{r['codec']} learn_in_process, microseconds per event: "
                    + ", ".join(f"{k} {v}" for k, v in st.items()) + f" (total {sum(st.values()):.1f})"]
        if "worker_task_thread_wall_share" in r:
            share = r["worker_task_thread_wall_share"]
            out += ["", f"py-spy, {r['codec']} job_1w worker actor task thread, share of wall time over "
                    f"{r['profiled_seconds']:g} s:", ""]
            out += [f"- {k}: {v:.1%}" for k, v in share.items()]
            out += ["", "parameter server, hottest leaf functions (CPU samples): "
                    + "; ".join(f"{k} {v:.0%}" for k, v in r.get("ps_top_leaf_functions", [])[:5])]
    return "\n".join(out) + "\n"


def run(bootstrap: str, events: int, partitions: int, codecs: list[str], repeat: int, pack: int,
        rows: list[Callable[[Bench], Measured]], profile: float) -> None:
    schema = Schema.from_spec(10, 64)
    for codec in codecs:
        u = uuid.uuid4().hex[:10]
        settings = KafkaSettings(bootstrap, predictions_topic=f"bench-{u}.predictions",
                                 feedback_topic=f"bench-{u}.feedback", dlq_topic=f"bench-{u}.dlq")
        create_topics(settings, partitions)
        try:
            stream = Simulator(SimConfig(events=events // 2, seed=0), DataConfig()).events()
            start = time.perf_counter()
            counts = produce_stream(settings, stream, codec=codec, pack=pack)
            seconds = time.perf_counter() - start
            n_events = counts["predictions"] + counts["feedback"]
            _emit({"bench": "kafka_throughput", "codec": codec, "row": "produce (simulate + encode + send)",
                   "events": n_events, "records": counts["records"], "seconds": round(seconds, 3),
                   "events_per_second": round(n_events / seconds)})
            bench = Bench(settings, codec, partitions, n_events, counts["records"], schema)
            ceiling = None
            for row in rows:
                runs = [row(bench) for _ in range(repeat)]
                if any(r.records != bench.records for r in runs):
                    print(f"warning: {row.__name__} did not read every record: "
                          f"{[r.records for r in runs]} of {bench.records}", file=sys.stderr)
                eps = statistics.median(r.events / r.seconds for r in runs)  # median rate over the repeats
                m = sorted(runs, key=lambda r: r.events / r.seconds)[len(runs) // 2]
                if row is row_raw:
                    ceiling = eps
                _emit({"bench": "kafka_throughput", "codec": codec, "row": row.__name__.removeprefix("row_"),
                       "events": m.events, "records": m.records, "seconds": round(m.seconds, 3),
                       "events_per_second": round(eps), "records_per_second": round(m.records / m.seconds),
                       "ratio_to_raw": round(eps / ceiling, 3) if ceiling else None,
                       "all_events_per_second": [round(r.events / r.seconds) for r in runs],
                       "repeat": repeat, "partitions": partitions, "crc_checks": SourceConfig().check_crcs,
                       "client": settings.client,
                       **m.extra})
            if profile and codec == "json":
                _emit({"bench": "kafka_throughput", "codec": codec, "row": "profile_job_1w (py-spy)",
                       **profile_job(bench, profile)})
        finally:
            admin = KafkaAdminClient(**settings.kafka_python_kwargs())
            try:
                admin.delete_topics([settings.predictions_topic, settings.feedback_topic, settings.dlq_topic],
                                    raise_errors=False)
            finally:
                admin.close()


def main(argv: list[str] | None = None) -> int:
    tune_gc()  # as in a worker process, for the in-process rows too
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--bootstrap-servers", default=os.environ.get("STREAMLEARN_KAFKA_BOOTSTRAP"),
                   help="an existing broker (default: start a throwaway one with deploy/kafka/local.sh)")
    p.add_argument("--events", type=int, default=600_000, help="predictions + feedback per codec")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--codec", action="append", choices=("json", "binary"), help="default: both")
    p.add_argument("--pack", type=int, default=64, help="binary: events per record")
    p.add_argument("--repeat", type=int, default=3, help="runs per row; the median is reported")
    names = [r.__name__.removeprefix("row_") for r in ROWS]
    p.add_argument("--rows", default=",".join(names), help=f"comma-separated subset of {','.join(names)}")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="also py-spy a 1-worker JSON job for this long (0: no profile)")
    args = p.parse_args(argv)
    codecs = args.codec or ["json", "binary"]
    wanted = [w.strip() for w in args.rows.split(",") if w.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        p.error(f"--rows: unknown {', '.join(unknown)} (choose from {', '.join(names)})")
    if "raw" not in wanted:
        wanted.insert(0, "raw")  # the ceiling every ratio divides by
    rows = [r for r in ROWS if r.__name__.removeprefix("row_") in wanted]
    try:
        with harness.broker(args.bootstrap_servers) as bootstrap:
            run(bootstrap, args.events, args.partitions, codecs, args.repeat, args.pack, rows, args.profile)
    finally:
        import ray

        ray.shutdown()
    write_results(EMITTED, "python benchmarks/kafka_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


def write_results(lines: list[dict[str, Any]], command: str) -> None:
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    (harness.RESULTS / "kafka_throughput.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (harness.RESULTS / "kafka_throughput.md").write_text(render(lines, command))


if __name__ == "__main__":
    sys.exit(main())
