"""Build and run a job: Ray actors on co-partitioned partitions, parameter servers, checkpoints, metrics.

The driver (this process) owns the loop: it keeps one ``step`` in flight per
worker (``ray.wait``, never ``ray.get`` in a loop), folds each step's result
into the metrics and the divergence guard, and takes checkpoints. A
checkpoint pauses the workers between steps (no push in flight), so the
shards' weights and the workers' offsets, join state and lineage agree.

Recovery is global, as in Flink: when any actor dies, Ray restarts it
(``max_restarts``) and the driver restores every shard and every worker from
the newest checkpoint; the sources seek to its offsets and replay. Every
event's update is then in the surviving model exactly once.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError

from streamlearn import checkpoint
from streamlearn.cluster import start_ray
from streamlearn.config import JobConfig
from streamlearn.divergence import DivergenceDetector
from streamlearn.evaluate import heldout_scores
from streamlearn.ingest import Ingest
from streamlearn.learner import BatchStats, Learner
from streamlearn.metrics import Metrics
from streamlearn.ps import merge
from streamlearn.simulate import Dataset, Simulator
from streamlearn.source import EventSource, MemorySource
from streamlearn.worker import DeadLetters, ParamClient, StepResult, Worker, regroup, step_records

log = logging.getLogger("streamlearn.job")


# -- building a worker (runs inside the worker actor's process) ------------------------


def build_source(cfg: JobConfig, partitions: list[int]) -> tuple[EventSource, DeadLetters | None]:
    """(source, dead-letter sink) for a worker's partitions (the embedded stream counts bad events only)."""
    if cfg.source == "embedded":
        src = MemorySource(lambda: Simulator(cfg.sim, cfg.data).events(block=64), cfg.partitions, partitions,
                           codec=cfg.codec)
        return src, None
    from streamlearn.kafka import DeadLetterSink, KafkaSource

    settings = kafka_settings(cfg)
    return KafkaSource(settings, partitions), DeadLetterSink(settings)


def kafka_settings(cfg: JobConfig) -> Any:
    from streamlearn.kafka import KafkaSettings

    k = cfg.kafka
    return KafkaSettings(
        bootstrap_servers=k.bootstrap_servers, predictions_topic=k.predictions_topic,
        feedback_topic=k.feedback_topic, dlq_topic=k.dlq_topic, group_id=k.group_id,
        security_protocol=k.security_protocol, ssl_cafile=k.ssl_cafile, ssl_certfile=k.ssl_certfile,
        ssl_keyfile=k.ssl_keyfile, sasl_mechanism=k.sasl_mechanism, sasl_username=k.sasl_username,
        sasl_password=k.password(), client=k.client,
    )


def build_worker(cfg: JobConfig, worker: int, partitions: list[int], ps: ParamClient) -> Worker:
    source, sink = build_source(cfg, partitions)
    return Worker(worker, Learner(cfg.model, cfg.objective, cfg.optim), Ingest(cfg.schema, cfg.join), source, ps,
                  cfg.ps, dead_letters=sink, max_records=cfg.max_records)


# -- the driver ----------------------------------------------------------------------------


@dataclass
class Totals:
    """Running totals over the job's steps."""

    records: int = 0
    stats: BatchStats = field(default_factory=BatchStats)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    join: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)
    updates: int = 0
    dropped: int = 0
    dropped_examples: int = 0
    pushes: int = 0
    push_seconds: float = 0.0
    push_wait_seconds: float = 0.0
    push_held_seconds: float = 0.0
    compute_seconds: float = 0.0
    step_seconds: float = 0.0

    def add(self, r: StepResult) -> None:
        self.records += r.records
        r.stats.losses = []
        self.stats.add(r.stats)
        self.counts.update(r.counts)
        self.join.update(r.join)
        self.dead.update(r.dead)
        self.updates += len(r.staleness) - r.dropped
        self.dropped += r.dropped
        self.dropped_examples += r.dropped_examples
        self.pushes += r.pushes
        self.push_seconds += r.push_seconds
        self.push_wait_seconds += r.push_wait_seconds
        self.push_held_seconds += r.push_held_seconds
        self.compute_seconds += sum(r.batch_seconds)
        self.step_seconds += r.step_seconds


def assign(partitions: int, workers: int) -> list[list[int]]:
    """Worker w owns partitions w, w + W, ...: both topics' partition p go to the same worker."""
    return [list(range(w, partitions, workers)) for w in range(workers)]


class Job:
    def __init__(self, cfg: JobConfig, progress: Callable[[str], None] | None = None,
                 handle_signals: bool = False) -> None:
        self.cfg = cfg
        self.handle_signals = handle_signals  # SIGTERM/SIGINT: drain, checkpoint, summary
        self.progress = progress
        self.metrics = Metrics(checkpoints=cfg.checkpoint.dir is not None)
        self.detector = DivergenceDetector(cfg.divergence)
        self.rollbacks = 0
        self.totals = Totals()
        self.stop_reason = ""
        self._stop = threading.Event()
        self.restored_from: str | None = None
        self.recoveries = 0
        self.checkpoints = 0
        self.lineage: Counter[tuple[int, str]] = Counter()
        self.exhausted: set[int] = set()  # embedded workers at the end of their stream
        self._limits: dict[Any, int] = {}  # with max_events: the most records each queued step may poll
        self._parked: set[int] = set()  # workers with no step queued: max_events is all promised
        self._dry: set[int] = set()  # workers whose last poll came back empty (none since brought records)
        # records consumed again after a recovery (the sources seek back to the checkpoint): max_events counts
        # a record once, so it counts records less these; and the count of once-counted records at the last save
        self.replayed = 0
        self._fresh_at_save = 0
        # what the divergence guard saw at its last look: updates, (loss sum, examples), last good mark
        self._seen_updates = 0
        self._seen_loss: tuple[float, int] = (0.0, 0)
        self._seen_positive: tuple[float, int] = (0.0, 0)  # the positives' summed -log p(y|x), count
        self._good_at = -(10**9)

    # -- lifecycle -------------------------------------------------------------------

    def request_stop(self, reason: str = "signal") -> None:
        self.stop_reason = self.stop_reason or reason
        self._stop.set()

    def _start_ray(self) -> None:
        start_ray(self.cfg.ray)

    def _partitions(self) -> int:
        if self.cfg.source == "embedded":
            return self.cfg.partitions
        from streamlearn.kafka import check_copartitioned

        n: int = check_copartitioned(kafka_settings(self.cfg))
        if n < self.cfg.workers:
            log.warning("%d workers but only %d partitions: %d workers will idle", self.cfg.workers, n,
                        self.cfg.workers - n)
        return n

    def _build(self) -> None:
        from streamlearn.actors import ParamServerActor, WorkerActor, placed

        cfg = self.cfg
        n = self.partition_count
        self.assignment = [a for a in assign(n, cfg.workers) if a]
        server: Any = placed(ParamServerActor, cfg.ray.actor_resource)
        worker: Any = placed(WorkerActor, cfg.ray.actor_resource)
        self.shards = [server.remote(i, cfg.ps, cfg.model, cfg.optim, len(self.assignment))
                       for i in range(cfg.ps.shards)]
        self.workers = [worker.remote(w, cfg, parts, self.shards) for w, parts in enumerate(self.assignment)]
        # every actor constructed (sources connected, servers built) before any idle clock starts
        ray.get([w.ready.remote() for w in self.workers] + [s.norm_sq.remote() for s in self.shards])
        self.metrics.workers.set(len(self.workers))

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.partition_count = self._partitions()  # fail fast on the topics, before Ray starts
        self._start_ray()
        if self.handle_signals:
            install_signal_handlers(self)  # after ray.init, which installs its own
        port = self.metrics.serve(cfg.metrics)
        if port is not None and self.progress:
            self.progress(f"metrics on http://{cfg.metrics.host}:{port}/metrics")
        self.metrics_port = port
        self._build()
        found = checkpoint.latest(cfg.checkpoint.dir)
        if found is not None:
            self._restore(found[1])
            self.restored_from = str(found[0])
            if self.progress:
                self.progress(f"restored {found[0].name} (model version {found[1]['version']})")
        start = time.monotonic()
        try:
            self._loop(start)
        finally:
            seconds = time.monotonic() - start
        summary = self._summary(seconds)
        self._shutdown()
        return summary

    def _shutdown(self) -> None:
        try:
            ray.get([w.close.remote() for w in self.workers], timeout=30)
        except Exception as exc:  # closing is best effort: the job's result is already final
            log.warning("closing workers: %s", exc)
        for a in [*self.workers, *self.shards]:
            ray.kill(a, no_restart=True)
        self.metrics.close()

    # -- the loop --------------------------------------------------------------------

    def _loop(self, start: float) -> None:
        """Step until a stop condition, then drain. An actor that dies while the job stops (a parked worker
        has no step in flight to report it) fails the drain: recover, and go on stepping if the recovery
        rewound what ``max_events`` counted; else stop again."""
        inflight: dict[Any, int] = {}
        self._issue(inflight)
        while True:
            self._steps(inflight, start)
            try:
                self._drain()
                return
            except RayError as exc:
                self._recover(inflight, exc)
            max_events = self.cfg.stop.max_events
            if self.stop_reason == "max_events" and max_events is not None and self.fresh_records < max_events:
                self.stop_reason = ""
                self._stop.clear()

    def _steps(self, inflight: dict[Any, int], start: float) -> None:
        """Keep a step in flight per worker (two outside sync mode) until a stop condition; between results,
        watch the weight norm, checkpoint when due and report progress."""
        cfg = self.cfg
        last_records = time.monotonic()
        last_ckpt = time.monotonic()
        updates_at_ckpt = 0
        last_report = 0.0
        norm = 0.0
        norm_at = 0.0
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
            for ref in ready:
                w = inflight.pop(ref)
                try:
                    r: StepResult = ray.get(ref)
                except RayError as exc:
                    self._recover(inflight, exc)
                    break
                self._fold(r)
                if r.records:
                    last_records = time.monotonic()
                self._mark_dry(w, r)
                if not self._stopping(start, last_records, self.exhausted):
                    for parked in sorted(self._parked - {w}):  # a step came back, maybe short: promise again
                        self._send(inflight, parked)
                    self._send(inflight, w)
                elif cfg.ps.mode == "sync":  # don't let the others' rounds wait for a worker that stopped
                    ray.get([s.set_workers.remote(max(1, len(inflight))) for s in self.shards])
            now = time.monotonic()
            if now - norm_at > 0.5 and not self._stop.is_set():
                try:
                    norm = self._weight_norm()
                    self._guard(norm)
                except RayError as exc:  # a server died between steps
                    self._recover(inflight, exc)
                norm_at = now
            self.metrics.weight_norm.set(norm)
            self.metrics.tick(cfg.metrics.history, cfg.metrics.history_every_seconds)
            ck = cfg.checkpoint
            due = ck.dir and ((ck.every_seconds and now - last_ckpt >= ck.every_seconds) or
                              (ck.every_updates and self.totals.updates - updates_at_ckpt >= ck.every_updates))
            if due and inflight:
                self._checkpoint(inflight)
                last_ckpt, updates_at_ckpt = time.monotonic(), self.totals.updates
            if self.progress and now - last_report > 2.0:
                last_report = now
                self.progress(self._progress_line(now - start))
            self._stopping(start, last_records, self.exhausted)

    def _drain(self) -> None:
        """Learn the partial micro-batches, then a final checkpoint."""
        ray.get([s.set_workers.remote(len(self.workers)) for s in self.shards])
        drained = ray.get([w.step.remote(drain=True) for w in self.workers])
        for r in drained:
            self._fold(r)
        if self.cfg.checkpoint.dir:
            self._save()

    def _issue(self, inflight: dict[Any, int]) -> None:
        """Queue steps on every worker: two each outside sync mode, so a worker never idles while the driver
        folds its last result (the actor runs them in order); one in sync mode, where a round counts them."""
        for _ in range(self._depth):
            for i in range(len(self.workers)):
                self._send(inflight, i)

    @property
    def _depth(self) -> int:
        return 1 if self.cfg.ps.mode == "sync" else 2

    def _mark_dry(self, w: int, r: StepResult) -> None:
        """A worker is dry once a poll of its partitions came back empty, until one brings records. A step that
        did not poll (its limit was 0, or in sync mode its buffer held a round) says nothing either way."""
        if r.records:
            self._dry.discard(w)
        elif r.polled_empty:
            self._dry.add(w)

    def _send(self, inflight: dict[Any, int], w: int) -> None:
        """Queue a step on worker ``w``. With ``max_events``, steps in flight never poll more than what is
        left: a step polls at most the rest not promised to steps already queued; when nothing is left to
        promise the worker waits (parked) for those steps to come back, possibly short. In sync mode it steps
        with a limit of 0 instead, which still answers its round. A dry worker (its last poll came back empty)
        is promised nothing while another is not dry: else, steps coming back together (sync rounds), it
        could claim the rest again and again and starve the worker whose partitions hold it. When every worker
        is dry, all are promised again, afresh: the first to come back would claim it all, and if its poll comes
        back empty again it is the only one dry, so the next promise goes to another."""
        limit = None
        if self.cfg.stop.max_events is not None:
            self._limits = {ref: n for ref, n in self._limits.items() if ref in inflight}
            left = self.cfg.stop.max_events - self.fresh_records - sum(self._limits.values())
            limit = max(0, min(step_records(self.cfg.max_records), left))
            if len(self._dry) >= len(self.workers):
                self._dry.clear()
            if w in self._dry:
                limit = 0
            if limit == 0 and self.cfg.ps.mode != "sync":
                self._parked.add(w)
                return
        self._parked.discard(w)
        ref = self.workers[w].step.remote(False, limit)
        inflight[ref] = w
        if limit is not None:
            self._limits[ref] = limit

    def _stopping(self, start: float, last_records: float, exhausted: set[int]) -> bool:
        s = self.cfg.stop
        now = time.monotonic()
        if s.max_events is not None and self.fresh_records >= s.max_events:
            self.request_stop("max_events")
        elif s.max_seconds is not None and now - start >= s.max_seconds:
            self.request_stop("max_seconds")
        elif s.until_idle is not None and now - last_records >= s.until_idle:
            self.request_stop("until_idle")
        elif self.cfg.source == "embedded" and len(exhausted) == len(self.workers):
            self.request_stop("end_of_stream")
        return self._stop.is_set()

    @property
    def fresh_records(self) -> int:
        """Records consumed, each once: those replayed after a recovery are not counted again."""
        return self.totals.records - self.replayed

    def _fold(self, r: StepResult) -> None:
        if r.exhausted and r.records == 0:
            self.exhausted.add(r.worker)
        self.metrics.observe(r)
        self.totals.add(r)
        self.lineage.update(r.applied)

    def _weight_norm(self) -> float:
        return math.sqrt(sum(ray.get([s.norm_sq.remote() for s in self.shards])))

    def _guard(self, norm: float) -> None:
        """Feed the detector what happened since the last look; act on a divergence."""
        t = self.totals
        new_updates = t.updates - self._seen_updates
        losses = (t.stats.loss_positive + t.stats.loss_negative, t.stats.examples)
        n = losses[1] - self._seen_loss[1]
        if new_updates <= 0 or n <= 0:  # pushes settle a step after their examples' losses: wait for both
            return
        loss = (losses[0] - self._seen_loss[0]) / n
        pos = (t.stats.loss_positive, t.stats.positive)
        since = (pos[0] - self._seen_positive[0], pos[1] - self._seen_positive[1])
        self._seen_updates, self._seen_loss, self._seen_positive = t.updates, losses, pos
        fired = self.detector.observe(loss, norm, applied=True, updates=new_updates, positives=since)
        for kind in fired:
            self.metrics.divergence.labels(kind).inc()
        g = self.cfg.divergence
        if any(k != "non_finite" for k in fired) or not math.isfinite(norm):  # not finite weights: act too
            # all shards or none: a restarted shard has no good state until the next mark_good
            if g.guard == "rollback" and all(ray.get([s.has_good.remote() for s in self.shards])):
                ray.get([s.rollback.remote() for s in self.shards])
                self.rollbacks += 1
                self.metrics.rollbacks.inc()
                self.detector.reset_history()
            elif g.guard == "lower-lr":
                ray.get([s.scale_lr.remote(g.lr_factor) for s in self.shards])
            elif g.guard == "clip":
                ray.get([s.set_clip.remote(g.clip_norm) for s in self.shards])
        elif not self.detector.diverging:
            if g.guard == "clip":
                ray.get([s.set_clip.remote(None) for s in self.shards])
            if t.updates - self._good_at >= g.good_every:
                ray.get([s.mark_good.remote() for s in self.shards])
                self._good_at = t.updates
        self.metrics.diverging.set(1 if self.detector.diverging else 0)

    # -- checkpoints and recovery ----------------------------------------------------

    def _pause(self, inflight: dict[Any, int]) -> None:
        """Let the in-flight steps finish and fold them; re-issue nothing (the caller does).

        In sync mode each finished worker leaves the rounds, so the others' rounds
        close without waiting for a worker that has stopped stepping.
        """
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                inflight.pop(ref)
                self._fold(ray.get(ref))
            if self.cfg.ps.mode == "sync" and inflight:
                ray.get([s.set_workers.remote(len(inflight)) for s in self.shards])
        for r in ray.get([w.flush.remote() for w in self.workers]):  # pushes still in flight
            self._fold(r)

    def _checkpoint(self, inflight: dict[Any, int]) -> None:
        waiting = dict(inflight)
        try:
            self._pause(inflight)
            self._save()
        except RayError as exc:
            self._recover(inflight, exc)
            return
        if self.cfg.ps.mode == "sync":
            ray.get([s.set_workers.remote(len(self.workers)) for s in self.shards])
        for w in waiting.values():
            self._send(inflight, w)

    def _state(self) -> dict[str, Any]:
        shards = ray.get([s.snapshot.remote() for s in self.shards])
        workers = ray.get([w.snapshot.remote() for w in self.workers])
        return {
            "format": checkpoint.FORMAT,
            "version": shards[0]["version"],
            "shards": shards,
            "workers": workers,
            "assignment": self.assignment,
            "lineage": dict(self.lineage),
            "model": self.cfg.model,
            "classes": self.cfg.classes,
        }

    def _save(self) -> None:
        assert self.cfg.checkpoint.dir is not None
        state = self._state()
        path = checkpoint.save(self.cfg.checkpoint.dir, state, self.cfg.checkpoint.keep)
        self._fresh_at_save = self.fresh_records  # the workers are paused: what the saved positions include
        self.checkpoints += 1
        self.metrics.last_checkpoint = time.time()
        self.last_checkpoint = str(path)
        log.info("checkpoint %s (model version %d)", path.name, state["version"])

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("model") != self.cfg.model:
            raise ValueError(f"checkpoint model {state.get('model')} does not match the configured model "
                             f"{self.cfg.model}: use another --checkpoint-dir")
        if len(state["shards"]) != len(self.shards):
            raise ValueError(f"checkpoint has {len(state['shards'])} parameter-server shards, this job "
                             f"{len(self.shards)}: run with --ps-shards {len(state['shards'])}")
        workers = state["workers"]
        if state["assignment"] != self.assignment:
            log.warning("checkpoint partitions %s are read by %d workers now, as %s", state["assignment"],
                        len(self.assignment), self.assignment)
            workers = regroup(workers, self.assignment)
        ray.get([s.load.remote(st) for s, st in zip(self.shards, state["shards"], strict=True)])
        ray.get([w.restore.remote(st) for w, st in zip(self.workers, workers, strict=True)])
        ray.get([s.mark_good.remote() for s in self.shards])  # the restored state is the good one now
        self._good_at = self.totals.updates
        self.lineage = Counter(state["lineage"])

    def _recover(self, inflight: dict[Any, int], exc: Exception) -> None:
        """An actor died: let Ray restart it, then restore everything from the newest checkpoint."""
        self.recoveries += 1
        log.warning("actor failure (%s): restoring all actors from the newest checkpoint", type(exc).__name__)
        for ref in list(inflight):
            try:
                ray.get(ref, timeout=60)
            except Exception as err:  # the failed and the cancelled steps: their work is replayed
                log.debug("in-flight step lost: %s", err)
        for w in self.workers:  # a push still in flight must not land after the restore
            try:
                ray.get(w.flush.remote(), timeout=60)
            except Exception as err:
                log.debug("in-flight push lost: %s", err)
        inflight.clear()
        self.exhausted.clear()
        self._dry.clear()  # the restore moves the sources back
        found = checkpoint.latest(self.cfg.checkpoint.dir)
        deadline = time.monotonic() + 120
        while True:
            try:
                if found is None:
                    raise RuntimeError("no checkpoint to recover from (set --checkpoint-dir)")
                self._restore(found[1])
                # the sources are back at the checkpoint's positions: what was consumed since comes again
                self.replayed = self.totals.records - self._fresh_at_save
                break
            except RayError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # the actor is still restarting
        ray.get([s.set_workers.remote(len(self.workers)) for s in self.shards])
        self._issue(inflight)

    # -- reporting -------------------------------------------------------------------

    def _progress_line(self, seconds: float) -> str:
        t = self.totals
        acc = t.stats.positive_correct / t.stats.positive if t.stats.positive else float("nan")
        return (f"{t.records} records, {t.stats.positive}+/{t.stats.negative}- examples, progressive accuracy "
                f"{acc:.3f}, {t.updates} updates, {t.records / max(seconds, 1e-9):.0f} records/s")

    def final_weights(self) -> list[np.ndarray]:
        states = ray.get([s.weights.remote() for s in self.shards])
        return merge(states)

    def _summary(self, seconds: float) -> dict[str, Any]:
        t, cfg = self.totals, self.cfg
        consumed = sum(n for (_, outcome), n in t.counts.items() if outcome == "consumed")
        invalid = sum(n for (_, outcome), n in t.counts.items() if outcome == "invalid")
        positions: dict[str, int] = {}
        for st in ray.get([w.snapshot.remote() for w in self.workers]):
            for (topic, part), off in st["positions"].items():
                positions[f"{topic}:{part}"] = off
        out: dict[str, Any] = {
            "events_consumed": consumed,
            "examples_positive": t.stats.positive,
            "examples_negative": t.stats.negative,
            "invalid": invalid,
            "duplicates": t.join["duplicate"],
            "expired": t.join["expired"] + t.join["evicted"],
            "progressive_accuracy": _ratio(t.stats.positive_correct, t.stats.positive),
            "negative_avoidance": _ratio(t.stats.negative_avoided, t.stats.negative),
            "model_examples_positive": sum(n for (_, pol), n in self.lineage.items() if pol == "positive"),
            "model_examples_negative": sum(n for (_, pol), n in self.lineage.items() if pol == "negative"),
            "model_examples_by_partition": {str(p): n for p, n in sorted(_by_partition(self.lineage).items())},
            "offsets": dict(sorted(positions.items())),
            "updates": t.updates,
            "stale_dropped": t.dropped,
            "stale_dropped_examples": t.dropped_examples,
            "divergence_events": dict(self.detector.events),
            "diverged": bool(sum(self.detector.events.values())),
            "rollbacks": self.rollbacks,
            "workers": len(self.workers),
            "ps_mode": cfg.ps.mode,
            "ps_shards": cfg.ps.shards,
            "recoveries": self.recoveries,
            "records_replayed": self.replayed,
            "restored_from": self.restored_from,
            "checkpoints": self.checkpoints,
            "stop_reason": self.stop_reason,
            "seconds": round(seconds, 3),
            "events_per_second": round(consumed / seconds, 1) if seconds > 0 else None,
            "pushes": t.pushes,
            "grads_per_push_mean": round((t.updates + t.dropped) / t.pushes, 1) if t.pushes else None,
            # share of the workers' step time spent in calls to the servers (pushes, pulls: Ray overhead, waiting)
            "push_fraction": round(t.push_seconds / t.step_seconds, 4) if t.step_seconds else None,
            "push_to_compute": round(t.push_seconds / t.compute_seconds, 4) if t.compute_seconds else None,
            # the part of push_fraction spent waiting for replies (sync: for the round to close), not calling
            "push_wait_fraction": round(t.push_wait_seconds / t.step_seconds, 4) if t.step_seconds else None,
            # the servers holding replies (sync: the round) is not the calls' cost; the rest is
            "call_overhead_fraction": round((t.push_seconds - t.push_held_seconds) / t.step_seconds, 4)
            if t.step_seconds else None,
        }
        self.weights = self.final_weights()  # kept for callers after the actors are gone
        if cfg.source == "embedded":
            learner = Learner(cfg.model, cfg.objective, cfg.optim)
            for p, v in zip(learner.params, self.weights, strict=True):
                np.copyto(p, v)
            data = Dataset(cfg.data)
            x, y = data.heldout()
            out.update(heldout_scores(learner, x, y, data.features(x)))
        return out


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _by_partition(lineage: Counter[tuple[int, str]]) -> Counter[int]:
    out: Counter[int] = Counter()
    for (p, _), n in lineage.items():
        out[p] += n
    return out


def install_signal_handlers(job: Job) -> None:
    """SIGTERM / SIGINT: stop taking new steps, drain, checkpoint, print the summary."""

    def handler(signum: int, _frame: object) -> None:
        job.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
