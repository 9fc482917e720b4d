"""Shared pieces of the benchmarks: a throwaway broker, topics, a timed Job, memory sampling, py-spy.

Throughput of a job is measured from the first record consumed to the last,
never from process or Ray start: :func:`_timing_hooks` waits, after building
the actors, until every worker and parameter-server actor answers a call
(constructed: Kafka consumer connected, offsets resolved), so
the window opens just before the workers' first poll; it closes when the
driver receives the last step result that consumed records (those records
are then learned). ``events_per_second`` = all events in the topic / the
window. Events = Kafka records x events per record of the topic (1 for JSON;
~64 for the binary codec's packed records).

Memory is the peak of the summed RSS of this process (the Ray driver) and the
job's actor processes (``ray::WorkerActor``, ``ray::ParamServerActor``),
sampled every 0.2 s; ``peak_rss_ray_mb`` adds every other Ray process (GCS,
raylet, agents). Summed RSS counts shared library pages once per process, so
it overstates a little (each process maps its shared libraries once more).
"""

from __future__ import annotations

import collections
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from streamlearn.events import Event
from streamlearn.kafka import KafkaSettings, create_topics, produce_stream
from streamlearn.simulate import DataConfig

if TYPE_CHECKING:
    import numpy as np

LOCAL_SH = Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "local.sh"
RESULTS = Path(__file__).resolve().parent / "results"
# the sparse setting: 1000 features, 20 named per event, for the hashed model with these config keys
SPARSE_DATA = DataConfig("synthetic", 1000, 10, sparse_active=20)
HASHED_MODEL: dict[str, Any] = {"kind": "hashed", "buckets": 1 << 18}
ACTOR_NAMES = ("WorkerActor", "ParamServer")  # process titles of a job's actors (truncated to 15 chars)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_broker() -> Iterator[str]:
    """A throwaway broker from deploy/kafka/local.sh; stopped and purged on exit."""
    port, cport = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="streamlearn-bench-") as tmp:
        env = {**os.environ, "STREAMLEARN_KAFKA_DATA": f"{tmp}/data",
               "STREAMLEARN_KAFKA_CONTROLLER_PORT": str(cport)}
        try:
            out = subprocess.run([str(LOCAL_SH), "start", "--port", str(port)], env=env, check=True,
                                 capture_output=True, text=True, timeout=600)
            yield out.stdout.strip().splitlines()[-1]
        finally:
            subprocess.run([str(LOCAL_SH), "stop", "--purge", "--port", str(port)], env=env,
                           capture_output=True, timeout=120, check=False)


@contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    """The given broker, or a throwaway local one."""
    if bootstrap:
        yield bootstrap
    else:
        with local_broker() as b:
            yield b


# -- topics ----------------------------------------------------------------------------


@dataclass
class Topics:
    """One uuid-named topic pair holding one encoding of a stream."""

    settings: KafkaSettings
    codec: str
    partitions: int
    predictions: int = 0
    feedback: int = 0
    records: int = 0
    produce_seconds: float = 0.0

    @property
    def events(self) -> int:
        return self.predictions + self.feedback

    @property
    def events_per_record(self) -> float:
        return self.events / self.records if self.records else 1.0


def make_topics(bootstrap: str, codec: str, partitions: int, tag: str = "bench") -> Topics:
    u = f"{tag}-{uuid.uuid4().hex[:10]}"
    settings = KafkaSettings(bootstrap, predictions_topic=f"{u}.predictions", feedback_topic=f"{u}.feedback",
                             dlq_topic=f"{u}.dlq")
    create_topics(settings, partitions)
    return Topics(settings, codec, partitions)


def fill(topics: Topics, events: Iterable[Event], pack: int = 64) -> Topics:
    start = time.perf_counter()
    counts = produce_stream(topics.settings, events, codec=topics.codec, pack=pack)
    topics.produce_seconds = time.perf_counter() - start
    topics.predictions, topics.feedback, topics.records = counts["predictions"], counts["feedback"], counts["records"]
    return topics


def delete_topics(topics: Iterable[Topics]) -> None:
    from kafka.admin import KafkaAdminClient

    names = [n for t in topics for n in (t.settings.predictions_topic, t.settings.feedback_topic,
                                         t.settings.dlq_topic)]
    if not names:
        return
    first = next(iter(topics))
    admin = KafkaAdminClient(**first.settings.kafka_python_kwargs())
    try:
        admin.delete_topics(names, raise_errors=False)
    finally:
        admin.close()


# -- memory ------------------------------------------------------------------------------


class RssSampler:
    """Peak summed RSS of this process + the job's actor processes (and + all Ray processes), sampled."""

    def __init__(self, every: float = 0.2, root: int | None = None, rescan: float = 2.0) -> None:
        self.every, self.rescan = every, rescan
        self.root = psutil.Process(root or os.getpid())
        self.peak_job = 0
        self.peak_all = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._children: list[tuple[psutil.Process, bool]] = []  # (process, is a job actor)
        self._scanned = -math.inf

    def sample(self) -> None:
        # listing the process tree reads all of /proc: do it every ``rescan`` seconds, not every sample,
        # so the sampler takes little of the CPU the job it measures is using
        if time.monotonic() - self._scanned > self.rescan:
            self._scanned = time.monotonic()
            found = []
            for child in self.root.children(recursive=True):
                try:
                    found.append((child, any(n in child.name() for n in ACTOR_NAMES)))
                except psutil.Error:
                    continue
            self._children = found
        job = total = self.root.memory_info().rss
        for child, actor in self._children:
            try:
                rss = child.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            if actor:
                job += rss
        self.peak_job = max(self.peak_job, job)
        self.peak_all = max(self.peak_all, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def mb(n: int) -> float:
    return round(n / (1 << 20), 1)


# -- a timed job on Ray ------------------------------------------------------------------


def start_ray(num_cpus: int = 2) -> None:
    """A local Ray as the job starts it (effective only if nothing imported ray yet, for loopback)."""
    from streamlearn.cluster import loopback_ray

    loopback_ray()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only cluster
    from streamlearn.cluster import start_ray as start
    from streamlearn.config import RayConfig

    start(RayConfig(num_cpus=num_cpus))


def job_config(topics: Topics, workers: int = 1, classes: int = 10, n_features: int = 64,
               batch_size: int | None = None, **over: Any) -> Any:
    """The config ``streamlearn run`` builds from these flags (``over``: nested config keys).

    ``batch_size``: another micro-batch, with grads_per_push scaled so that a push still carries the
    default number of examples (replicas merge as often).
    """
    from streamlearn import config
    from streamlearn.learner import OptimConfig
    from streamlearn.ps import PSConfig

    s = topics.settings
    base: dict[str, Any] = {
        "source": "kafka", "classes": classes, "n_features": n_features, "workers": workers,
        "kafka": {"bootstrap_servers": s.bootstrap_servers, "predictions_topic": s.predictions_topic,
                  "feedback_topic": s.feedback_topic, "dlq_topic": s.dlq_topic},
        # stop as soon as every record is in (and never hang): the stream is finite. until_idle is only a
        # safety net: it counts from the last record, so a short one fires while slow actors still start
        "stop": {"max_events": topics.records, "until_idle": 60.0, "max_seconds": 600.0},
    }
    if batch_size is not None:
        per_push = PSConfig().grads_per_push * OptimConfig().batch_size
        base["optim"] = {"batch_size": batch_size}
        base["ps"] = {"grads_per_push": max(1, per_push // batch_size)}
    for key, value in over.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return config.load(None, base, env={})


@dataclass
class Stamp:
    t: float
    worker: int
    records: int
    step_seconds: float = 0.0


@dataclass
class JobRun:
    summary: dict[str, Any]
    weights: list[np.ndarray]
    events: int  # inside the steady-state window
    seconds: float  # the window's length
    wall_seconds: float  # Job.run() including actor start
    peak_rss_job: int
    peak_rss_ray: int
    stamps: list[Stamp] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)  # py-spy findings when asked for
    cpu_cores: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds / window seconds
    busy: float = math.nan  # the workers' Worker.step seconds in the window / (window seconds x workers)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


def _timing_hooks() -> Any:
    import ray

    from streamlearn.job import Hooks

    class Timing(Hooks):
        """Waits for the job's actors before the loop and stamps every step result the driver folds in."""

        def __init__(self) -> None:
            self.job: Any = None
            self.stamps: list[Stamp] = []
            self.ready_at = 0.0
            self.pids: list[int] = []  # workers', then shards' processes
            self.procs: list[psutil.Process] = []
            self.ready_event = threading.Event()
            self.cpu: tuple[dict[str, float], dict[str, float]] = ({}, {})  # CPU s by role: when ready, last record

        def _cpu(self) -> dict[str, float]:
            """User + system CPU seconds so far: the driver, the workers together, the shards together."""
            out = {"driver": sum(psutil.Process().cpu_times()[:2]), "workers": 0.0, "servers": 0.0}
            for i, proc in enumerate(self.procs):
                with suppress(psutil.Error):
                    out["workers" if i < self.job.fleet.workers else "servers"] += sum(proc.cpu_times()[:2])
            return out

        def ready(self) -> None:
            fleet = self.job.fleet
            ray.get([w.snapshot.remote() for w in fleet.handles] +
                    [s.norm_sq.remote() for s in fleet.shards])  # every actor constructed
            self.pids = ray.get([a.__ray_call__.remote(lambda _self: os.getpid()) for a in fleet.actors])
            self.procs = [psutil.Process(pid) for pid in self.pids]
            start = self._cpu()
            self.cpu = (start, start)
            self.ready_at = time.perf_counter()
            self.ready_event.set()

        def folded(self, r: Any) -> None:
            if r.records:
                self.stamps.append(Stamp(time.perf_counter(), r.worker, r.records, r.step_seconds))
                self.cpu = (self.cpu[0], self._cpu())  # ~0.1 ms, once per step result

    return Timing()


def window(ready: float, stamps: list[Stamp], per_record: float) -> tuple[int, float]:
    """(events, seconds) from the actors being ready to the last step result that consumed records."""
    if not stamps:
        return 0, 0.0
    return round(sum(s.records for s in stamps) * per_record), stamps[-1].t - ready


def run_job(cfg: Any, topics: Topics, profile: float = 0.0) -> JobRun:
    """Run a Job on the shared local Ray: events/s without actor start, peak memory, final weights.

    ``profile`` > 0: py-spy the first worker (wall time, idle included) and the
    first shard (CPU time) for that many seconds from the moment the actors
    are ready (the job must last that long), and summarise into ``profile``.
    """
    from streamlearn.worker import tune_gc

    start_ray()
    tune_gc()  # as the CLI's main does: the driver's collections delay the next step it sends (sync rounds wait)
    from streamlearn.job import Job

    timing = _timing_hooks()
    job = Job(cfg, hooks=timing)
    timing.job = job
    found: dict[str, Any] = {}

    def spy() -> None:
        if not timing.ready_event.wait(timeout=300):
            return
        worker, shard = timing.pids[0], timing.pids[job.fleet.workers]
        with pyspy({worker: True, shard: False}, profile) as files:
            pass
        if files[worker].exists():
            found["worker_task_thread_wall_share"] = worker_breakdown(files[worker])
        if files[shard].exists():
            found["ps_top_leaf_functions"] = top_functions(files[shard], 6)
        found["profiled_seconds"] = profile
        shutil.rmtree(files[worker].parent, ignore_errors=True)

    thread = threading.Thread(target=spy, daemon=True)
    if profile > 0:
        thread.start()
    t0 = time.perf_counter()
    with RssSampler() as rss:
        summary = job.run()
    wall = time.perf_counter() - t0
    if profile > 0:
        thread.join(timeout=profile + 60)
    stamps = timing.stamps
    events, seconds = window(timing.ready_at, stamps, topics.events_per_record)
    cores: dict[str, float] = {}
    if seconds > 0 and timing.cpu[0]:
        start, end = timing.cpu
        cores = {role: round((end[role] - start[role]) / seconds, 2) for role in start}
    busy = sum(s.step_seconds for s in stamps) / (seconds * job.fleet.workers) if seconds > 0 else math.nan
    return JobRun(summary, job.weights, events, seconds, wall, rss.peak_job, rss.peak_all, stamps, found, cores,
                  round(busy, 3))


def heldout_accuracy(model_cfg: Any, weights: list[np.ndarray], data: Any) -> float:
    """Score final weights on ``Dataset(data).heldout()`` with streamlearn.evaluate.heldout_scores."""
    import numpy as np

    from streamlearn.evaluate import heldout_scores
    from streamlearn.learner import Learner, OptimConfig
    from streamlearn.objective import Objective
    from streamlearn.simulate import Dataset

    learner = Learner(model_cfg, Objective(), OptimConfig())
    for p, v in zip(learner.params, weights, strict=True):
        np.copyto(p, v)
    ds = Dataset(data)
    x, y = ds.heldout()
    return float(heldout_scores(learner, x, y, ds.features(x))["heldout_accuracy"])


def heldout_set(data: Any) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    from streamlearn.simulate import Dataset

    ds = Dataset(data)
    x, y = ds.heldout()
    return x, y, ds.features(x)


# -- py-spy ---------------------------------------------------------------------------------


def actor_pids(kind: str = "WorkerActor") -> list[int]:
    me = psutil.Process()
    out = []
    for child in me.children(recursive=True):
        try:
            if kind[:10] in child.name():
                out.append(child.pid)
        except psutil.Error:
            continue
    return out


@contextmanager
def pyspy(pids: dict[int, bool], seconds: float, rate: int = 100) -> Iterator[dict[int, Path]]:
    """``py-spy record --threads --format raw`` on each pid for ``seconds``; pids map to "count idle samples".

    With idle samples the profile is wall time (where a thread waits counts);
    without, CPU time. The profiled process must outlive ``seconds``.
    """
    tmp = Path(tempfile.mkdtemp(prefix="streamlearn-pyspy-"))
    procs, files = [], {}
    for pid, idle in pids.items():
        f = tmp / f"{pid}.txt"
        files[pid] = f
        procs.append(subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
             *(["--idle"] if idle else []), "--threads", "--nonblocking", "--format", "raw", "--output", str(f)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        yield files
    finally:
        for p in procs:
            try:
                p.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                p.terminate()
                p.wait(timeout=10)


# Worker main-thread stages, first match wins, searched root -> leaf in each collapsed stack.
WORKER_STAGES: list[tuple[str, str]] = [
    ("poll (Kafka client)", r"KafkaSource\.next_batch \("),
    ("decode", r"^RecordDecoder\.__call__ \("),
    ("join", r"^Joiner\.add_(feedback|prediction) \("),
    ("learn, compiled (featurize, gradients, local steps)", r"^Learner\._compiled_batches \("),
    ("featurize (Learner.batch)", r"^Learner\.batch \("),
    ("pull weights", r"^Worker\._pull \("),
    ("push to PS (pack + Ray call + wait)", r"^Worker\._push \("),
    ("torch forward/backward (gradients)", r"^Learner\.gradients \("),
    ("local optimizer step (apply)", r"^Learner\.apply \("),
    ("ingest other (bookkeeping)", r"^Ingest\.process \("),
    ("worker other (step bookkeeping, lag, clone)", r"^Worker\.step \("),
]


def worker_breakdown(raw: Path) -> dict[str, Any]:
    """Wall-time shares of a worker actor's task thread, from a py-spy raw (collapsed) profile.

    The task thread is the one whose stacks reach ``Worker.step``; its samples
    outside a step are time spent waiting for the driver to send the next step.
    """
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        stage = "between steps (waiting for the driver / Ray task dispatch)"
        for name, pattern in WORKER_STAGES:
            if any(re.search(pattern, f) for f in frames):
                stage = name
                break
        threads[thread][stage] += int(count)
    task = [c for c in threads.values() if sum(v for k, v in c.items() if not k.startswith("between")) > 0]
    if not task:
        return {}
    c = max(task, key=lambda x: sum(x.values()))
    total = sum(c.values())
    return {k: round(v / total, 3) for k, v in c.most_common()}


def top_functions(raw: Path, n: int = 12) -> list[tuple[str, float]]:
    """Self-time share of the leaf frames of active (non-idle-looking) stacks."""
    leaf: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            leaf[stack.split(";")[-1]] += int(count)
    total = sum(leaf.values()) or 1
    return [(k, round(v / total, 3)) for k, v in leaf.most_common(n)]
