"""Distributed training on Ray: workers x parameter-server modes x shards on one pre-produced Kafka topic.

The simulated stream (digits, random policy, every prediction judged) is
produced ONCE, as JSON, to uuid-named topics; every row runs a
:class:`streamlearn.job.Job` (what ``streamlearn run`` runs) over ALL of it,
on one local Ray (``num_cpus`` 2) started once, and prints one JSON line:

    {"bench": "ray_throughput", "row": "2w async x1", "workers": 2, "ps_mode": "async", "ps_shards": 1,
     "grads_per_push": 64, "batch_size": 4, "events_per_second": ..., "peak_rss_mb": ...,
     "push_fraction": ..., "heldout_accuracy": ..., ...}

* ``events_per_second``: steady state, Ray and actor start excluded (see
  benchmarks/harness.py: the window while every worker is busy).
* ``peak_rss_mb``: peak of the summed RSS of the driver and the job's actor
  processes, sampled every 0.2 s; ``peak_rss_ray_mb`` adds Ray's own processes.
* ``push_fraction``: the job summary's share of the workers' step time spent
  in push calls (sending, and waiting for replies not yet there);
  ``push_wait_fraction``: the waiting part alone (in sync mode, for the round
  to close); ``call_overhead_fraction``: push_fraction less the part of the
  waits the servers still held the reply (each reply says how long its server
  held the push: in sync mode, until the round closed), i.e. the calls' own
  cost; ``push_to_compute``: push seconds / the gradient compute seconds.
* ``workers_busy``: the workers' time inside ``Worker.step`` over the window,
  per worker: below 1 they wait between steps (for the driver, Ray's dispatch).
* ``cpu_cores``: CPU seconds (user + system) over the window, per window
  second, of the workers together, the servers together and the driver: on
  2 cores, what is left for the broker and Ray.
* ``heldout_accuracy``: the final weights (``job.weights``) scored on
  ``Dataset(DataConfig()).heldout()`` with ``streamlearn.evaluate.heldout_scores``.

Then one summary line with the 2-worker / 1-worker ratio in async mode, and
the table rendered to benchmarks/results/ray_throughput[-ROWS][-rN].{md,jsonl}.
On 2 shared cores a row varies by +-25% between runs: ``--repeat`` reruns
each row and reports the median.

    python benchmarks/ray_throughput.py                  # starts and stops a local broker
    python benchmarks/ray_throughput.py --events 40000 --bootstrap-servers 127.0.0.1:9092 --rows base
    python benchmarks/ray_throughput.py --rows min --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import harness

from streamlearn.simulate import DataConfig, SimConfig, Simulator


@dataclass(frozen=True)
class Row:
    workers: int
    mode: str = "async"
    shards: int = 1
    grads_per_push: int | None = None  # None: the default (64)
    batch_size: int | None = None  # None: the default (4)
    group: str = "base"
    push_budget: float | None = None  # None: the default (0.04); 0: a fixed grads_per_push
    max_records: int | None = None  # None: the default records per step's poll
    most: int | None = None  # None: the default max_grads_per_push
    staleness: int | None = None  # None: the default max_staleness (bounded mode; its push cap is a quarter)

    @property
    def name(self) -> str:
        extra = "".join([f" gpp{self.grads_per_push}" if self.grads_per_push else "",
                         f" b{self.batch_size}" if self.batch_size else "",
                         f" poll{self.max_records}" if self.max_records else "",
                         f" most{self.most}" if self.most else "",
                         f" stale{self.staleness}" if self.staleness else "",
                         "" if self.push_budget is None else f" budget{self.push_budget:g}"])
        return f"{self.workers}w {self.mode} x{self.shards}{extra}"


BASE = [Row(w, m, s) for s in (1, 2) for m in ("async", "sync", "bounded") for w in (1, 2)]
TUNING = [Row(w, "async", 1, gpp, b, "tuning") for w in (1, 2)
          for gpp, b in ((8, None), (128, None), (None, 32), (128, 32))]
# the adaptive push cadence against a fixed grads_per_push, side by side
CADENCE = [Row(w, "async", s, group="cadence", push_budget=b) for w, s in ((1, 1), (2, 1), (1, 2), (2, 2))
           for b in (None, 0.0)]
# sync mode makes a round trip per micro-batch: its share shrinks only with a larger micro-batch
SYNC = [Row(2, "sync", batch_size=b, group="sync") for b in (None, 32, 128)]
# records per step: a step is a Ray task, a driver fold and, in sync mode, a round
POLL = [Row(w, m, s, group="poll", max_records=n) for w, m, s in ((2, "async", 1), (2, "sync", 1), (2, "async", 2))
        for n in (2000, 8000)]
# the cap on micro-batches per push, where the cadence reaches it: sync rounds, 2 shards
MOST = [Row(w, m, s, group="most", most=n) for w, m, s in ((2, "sync", 1), (2, "async", 2), (2, "async", 1))
        for n in (256, 512, 1024)]
# bounded mode's staleness bound, which also caps its pushes at a quarter of it
BOUND = [Row(2, "bounded", group="bound", staleness=n, most=max(512, n // 4)) for n in (512, 1024, 2048)]
# max_staleness on the hashed model (--data sparse), where it is also how old a row a worker reads may be
STALE = [Row(2, m, group="stale", staleness=n) for m in ("async", "bounded") for n in (512, 2048)]
GROUPS = {"base": BASE, "tuning": TUNING, "cadence": CADENCE, "sync": SYNC, "poll": POLL, "most": MOST, "bound": BOUND,
          "stale": STALE,
          "all": BASE + TUNING,
          "min": [Row(1), Row(2), Row(2, "sync"), Row(2, "bounded"), Row(1, shards=2), Row(2, shards=2)]}


# --data: the stream, and the model's config keys for it
DATA: dict[str, tuple[DataConfig, dict[str, Any]]] = {
    "digits": (DataConfig(), {}),
    "sparse": (harness.SPARSE_DATA, harness.HASHED_MODEL),
    # a harder one, where the model is not at its ceiling: noisier classes whose centres move
    "sparse-drift": (replace(harness.SPARSE_DATA, noise=3.0, drift=0.5), harness.HASHED_MODEL),
}


def measure_repeated(row: Row, topics: harness.Topics, data: str, repeat: int) -> dict[str, Any]:
    """``repeat`` runs of a row; the run with the median events/s is reported, with every run's rate."""
    runs = sorted((measure(row, topics, data) for _ in range(repeat)), key=lambda r: r["events_per_second"])
    line = runs[len(runs) // 2]
    line["all_events_per_second"] = [r["events_per_second"] for r in runs]
    line["all_heldout_accuracy"] = [r["heldout_accuracy"] for r in runs]
    line["all_progressive_accuracy"] = [r["progressive_accuracy"] for r in runs]
    return line


def measure(row: Row, topics: harness.Topics, data_name: str) -> dict[str, Any]:
    data, model = DATA[data_name]
    over: dict[str, Any] = {"ps": {"mode": row.mode, "shards": row.shards}}
    if model:
        over["model"] = dict(model)  # job_config may keep the dict it is given
    if row.grads_per_push:
        over["ps"]["grads_per_push"] = row.grads_per_push
    if row.push_budget is not None:
        over["ps"]["push_budget"] = row.push_budget
    if row.most:
        over["ps"]["max_grads_per_push"] = row.most
    if row.staleness:
        over["ps"]["max_staleness"] = row.staleness
    if row.batch_size:
        over["optim"] = {"batch_size": row.batch_size}
    if row.max_records:
        over["max_records"] = row.max_records
    cfg = harness.job_config(topics, workers=row.workers, classes=data.n_classes, n_features=data.n_features,
                             **over)
    run = harness.run_job(cfg, topics)
    s = run.summary
    return {
        "bench": "ray_throughput", "row": row.name, "group": row.group, "data": data_name, "workers": row.workers,
        "ps_mode": row.mode, "ps_shards": row.shards, "grads_per_push": cfg.ps.grads_per_push,
        "batch_size": cfg.optim.batch_size, "max_records": cfg.max_records,
        "events_per_second": round(run.events_per_second),
        "window_events": run.events, "window_seconds": round(run.seconds, 2),
        "job_summary_events_per_second": s["events_per_second"], "wall_seconds": round(run.wall_seconds, 1),
        "peak_rss_mb": harness.mb(run.peak_rss_job), "peak_rss_ray_mb": harness.mb(run.peak_rss_ray),
        "push_fraction": s["push_fraction"], "push_wait_fraction": s["push_wait_fraction"],
        "call_overhead_fraction": s["call_overhead_fraction"],
        "push_to_compute": s["push_to_compute"], "push_budget": cfg.ps.push_budget,
        "grads_per_push_mean": s["grads_per_push_mean"],
        "heldout_accuracy": harness.heldout_accuracy(cfg.model, run.weights, data),
        "progressive_accuracy": s["progressive_accuracy"], "updates": s["updates"],
        "stale_dropped": s["stale_dropped"], "complete": s["events_consumed"] == topics.records,
        "stop_reason": s["stop_reason"], "cpu_cores": run.cpu_cores, "workers_busy": run.busy,
    }


def _cores(cores: dict[str, float]) -> str:
    return ", ".join(f"{cores[k]:.2f}" for k in ("workers", "servers", "driver") if k in cores)


def render(lines: list[dict[str, Any]], summary: dict[str, Any], meta: dict[str, Any]) -> str:
    head = ("| row | events/s (median) | all runs | push_fraction | of which waiting | calls' own cost | "
            "push / compute | "
            "micro-batches per push | "
            "peak RSS driver+actors (MB) | + Ray processes (MB) | held-out acc | updates | stale dropped | "
            "CPU cores: workers, servers, driver |")
    out = [f"Ray throughput, {meta['date']}, {meta['machine']}; {meta['events']} events (JSON, {meta['data']}, "
           f"random policy), {meta['partitions']} partitions; `{meta['command']}`", "", head,
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in lines:
        flag = "" if r["complete"] else " (incomplete)"
        runs = ", ".join(f"{x:,}" for x in r["all_events_per_second"])
        out.append(f"| {r['row']}{flag} | {r['events_per_second']:,} | {runs} | {r['push_fraction']} | "
                   f"{r['push_wait_fraction']} | {r.get('call_overhead_fraction')} | {r['push_to_compute']} | "
                   f"{r['grads_per_push_mean']} | "
                   f"{r['peak_rss_mb']:,.0f} | "
                   f"{r['peak_rss_ray_mb']:,.0f} | {r['heldout_accuracy']:.3f} | "
                   f"{r['updates']:,} | {r['stale_dropped']:,} | {_cores(r.get('cpu_cores', {}))} |")
    out += ["", "Summary: " + ", ".join(f"{k} {v}" for k, v in summary.items() if k != "bench")]
    return "\n".join(out) + "\n"


def run(bootstrap: str, args: argparse.Namespace, rows: list[Row]) -> None:
    data = DATA[args.data][0]
    topics = harness.make_topics(bootstrap, "json", args.partitions, tag="ray-bench")
    lines: list[dict[str, Any]] = []
    try:
        harness.fill(topics, Simulator(SimConfig(events=args.events // 2, seed=0), data).events())
        print(json.dumps({"bench": "ray_throughput", "row": "produce", "events": topics.events,
                          "seconds": round(topics.produce_seconds, 2)}), flush=True)
        harness.start_ray(args.num_cpus)
        for row in rows:
            line = measure_repeated(row, topics, args.data, args.repeat)
            lines.append(line)
            print(json.dumps(line), flush=True)
    finally:
        harness.delete_topics([topics])
    by = {r["row"]: r for r in lines}
    summary: dict[str, Any] = {"bench": "ray_throughput", "row": "summary"}
    one, two = by.get("1w async x1"), by.get("2w async x1")
    if one and two:
        summary["ratio_2w_over_1w_async"] = round(two["events_per_second"] / one["events_per_second"], 2)
        summary["target_ratio_2w_over_1w"] = 1.4
    fr = [r["push_fraction"] for r in lines if r["push_fraction"] is not None]
    if fr:
        summary["push_fraction_min"], summary["push_fraction_max"] = min(fr), max(fr)
        summary["target_push_fraction"] = 0.05
    own = [r["call_overhead_fraction"] for r in lines if r.get("call_overhead_fraction") is not None]
    if own:
        summary["call_overhead_fraction_max"] = max(own)
    print(json.dumps(summary), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores", "data": args.data,
            "events": topics.events,
            "partitions": args.partitions, "command": "python benchmarks/ray_throughput.py " + " ".join(sys.argv[1:])}
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "ray_throughput" + ("" if args.rows == "all" else f"-{args.rows}") + \
        ("" if args.data == "digits" else f"-{args.data}") + \
        ("" if args.push_budget is None else f"-budget{args.push_budget:g}") + \
        ("" if args.repeat == 1 else f"-r{args.repeat}")
    (harness.RESULTS / f"{stem}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in [*lines, summary]))
    (harness.RESULTS / f"{stem}.md").write_text(render(lines, summary, meta))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--bootstrap-servers", default=os.environ.get("STREAMLEARN_KAFKA_BOOTSTRAP"),
                   help="an existing broker (default: start a throwaway one with deploy/kafka/local.sh)")
    p.add_argument("--events", type=int, default=80_000, help="predictions + feedback in the topic")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--rows", choices=sorted(GROUPS), default="all",
                   help="base: 1/2 workers x sync/async/bounded x 1/2 shards; tuning: grads-per-push and "
                        "batch size; cadence: the push budget vs a fixed grads-per-push; sync: sync mode at "
                        "micro-batch 4, 32, 128; poll: records per step; most: the cap on micro-batches per push; "
                        "bound: bounded mode's staleness bound; stale: max_staleness 512 / 2048, async and "
                        "bounded (with --data sparse: also the hashed model's row-refresh bound); "
                        "min: the six rows the issue asks for; all: base + tuning")
    p.add_argument("--data", choices=sorted(DATA), default="digits",
                   help="digits (dense linear model) or sparse (synthetic, 1000 features, 20 named per event: "
                        "the hashed model with 2^18 buckets); sparse-drift: the same, noisier, its class "
                        "centres moving")
    p.add_argument("--repeat", type=int, default=1, help="runs per row; the median-rate run is reported")
    p.add_argument("--grads-per-push", type=int, help="for every row that does not set its own")
    p.add_argument("--push-budget", type=float, help="for every row that does not set its own")
    args = p.parse_args(argv)
    try:
        with harness.broker(args.bootstrap_servers) as bootstrap:
            rows = GROUPS[args.rows]
            if args.grads_per_push:
                rows = [r if r.grads_per_push else replace(r, grads_per_push=args.grads_per_push) for r in rows]
            if args.push_budget is not None:
                rows = [r if r.push_budget is not None else replace(r, push_budget=args.push_budget) for r in rows]
            run(bootstrap, args, rows)
    finally:
        import ray

        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
