"""Every Prometheus metric of a job, declared once, and the scrape endpoint.

Workers report their numbers with each step's result (no extra calls per
event); the driver folds them in here. Names follow Prometheus conventions:
``streamlearn_`` prefix, base units, ``_total`` on counters, ``_seconds`` on
durations, low-cardinality labels only (never an event id).
"""

from __future__ import annotations

import errno
import json
import math
import time
from collections.abc import Callable
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streamlearn.config.runtime import MetricsConfig as MetricsConfig
from streamlearn.divergence import KINDS as DIVERGENCE_KINDS
from streamlearn.join import OUTCOMES as JOIN_OUTCOMES
from streamlearn.worker import StepResult

METRIC_NAMES = (
    "streamlearn_events_total",
    "streamlearn_examples_total",
    "streamlearn_updates_total",
    "streamlearn_divergence_events_total",
    "streamlearn_rollbacks_total",
    "streamlearn_stale_gradients_total",
    "streamlearn_dlq_records_total",
    "streamlearn_loss",
    "streamlearn_progressive_accuracy",
    "streamlearn_model_version",
    "streamlearn_gradient_norm",
    "streamlearn_weight_norm",
    "streamlearn_prediction_kl",
    "streamlearn_replica_drift",
    "streamlearn_diverging",
    "streamlearn_consumer_lag",
    "streamlearn_join_pending",
    "streamlearn_join_feedback_total",
    "streamlearn_checkpoint_age_seconds",
    "streamlearn_workers",
    "streamlearn_example_loss",
    "streamlearn_update_staleness",
    "streamlearn_batch_seconds",
    "streamlearn_worker_step_seconds_total",
    "streamlearn_ps_call_seconds_total",
    "streamlearn_pushes_total",
)

JOIN_STAGES = ("arrived", "joined")
LOSS_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, math.inf)
STALENESS_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, math.inf)
BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, math.inf)
YOUNG_ROWS = 50  # a young run's history gets a row every 1/YOUNG_ROWS of its age ...
YOUNG_MIN_SECONDS = 0.1  # ... but not more often than this: a 2 s demo still has ~20 rows to draw


class HistoryCadence:
    """When the next history row is due: at most ``every`` seconds apart, and more often while the run is
    young (every 1/:data:`YOUNG_ROWS` of its age, at least :data:`YOUNG_MIN_SECONDS` apart), so a run of a few
    seconds draws a curve and an hour-long one writes ~3600/``every`` rows, not a row per step."""

    def __init__(self, every: float, clock: Callable[[], float]) -> None:
        self.every, self.clock = every, clock
        self.started = clock()
        self.last: float | None = None

    def due(self) -> bool:
        now = self.clock()
        gap = min(self.every, max(YOUNG_MIN_SECONDS, (now - self.started) / YOUNG_ROWS))
        if self.last is not None and now - self.last < gap:
            return False
        self.last = now
        return True


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, ewma: float = 0.05,
                 checkpoints: bool = True, clock: Callable[[], float] = time.time) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.clock = clock  # the history's: when a row is due, and its "time"
        self.ewma = ewma
        self.events = Counter("streamlearn_events_total", "Events by topic and outcome "
                              "(consumed, joined, invalid, duplicate, expired, evicted)", ["topic", "outcome"],
                              registry=r)
        self.examples = Counter("streamlearn_examples_total", "Examples learned, by polarity", ["polarity"],
                                registry=r)
        self.updates = Counter("streamlearn_updates_total", "Gradients applied to the model", registry=r)
        self.divergence = Counter("streamlearn_divergence_events_total", "Divergence signals by kind", ["kind"],
                                  registry=r)
        self.rollbacks = Counter("streamlearn_rollbacks_total", "Rollbacks to the last good state", registry=r)
        self.stale = Counter("streamlearn_stale_gradients_total", "Gradients past the staleness bound",
                             ["action"], registry=r)
        self.dlq = Counter("streamlearn_dlq_records_total", "Records sent to the dead-letter topic, by reason",
                           ["reason"], registry=r)
        self.loss = Gauge("streamlearn_loss", "Recent mean per-example loss", ["polarity"], registry=r)
        self.accuracy = Gauge("streamlearn_progressive_accuracy", "Predict-before-learn accuracy (positives) "
                              "and wrong-label avoidance (negatives), recent", ["polarity"], registry=r)
        self.version = Gauge("streamlearn_model_version", "Parameter-server model version", registry=r)
        self.grad_norm = Gauge("streamlearn_gradient_norm", "Norm of the latest gradient", registry=r)
        self.weight_norm = Gauge("streamlearn_weight_norm", "Norm of the model's weights", registry=r)
        self.kl = Gauge("streamlearn_prediction_kl", "KL(serving model || current model) on recent joined "
                        "events, nats", registry=r)
        self.drift = Gauge("streamlearn_replica_drift", "Distance between a worker's replica and the "
                           "server's weights at its last pull", ["worker"], registry=r)
        self.diverging = Gauge("streamlearn_diverging", "1 while the model is diverging", registry=r)
        self.lag = Gauge("streamlearn_consumer_lag", "Records behind the end of the partition",
                         ["topic", "partition"], registry=r)
        self.pending = Gauge("streamlearn_join_pending", "Events waiting for their join partner", registry=r)
        # joined / arrived is the join hit rate (StreamlearnJoinHitRateLow): far below 1 when producers
        # partition the two topics differently
        self.join_feedback = Counter("streamlearn_join_feedback_total", "Feedback events that need their "
                                     "prediction (not inline, not duplicates), by stage: arrived, and joined with "
                                     "it", ["stage"], registry=r)
        # only with checkpoints on: without them there is no age, and one counted from the start would fire
        # StreamlearnCheckpointTooOld 15 minutes in
        self.checkpoint_age = Gauge("streamlearn_checkpoint_age_seconds", "Seconds since the last checkpoint "
                                    "(since the start before the first)", registry=r) if checkpoints else None
        self.workers = Gauge("streamlearn_workers", "Live worker actors", registry=r)
        self.example_loss = Histogram("streamlearn_example_loss", "Per-example loss, on a sample of up to 64 "
                                      "examples per worker step", ["polarity"],
                                      buckets=LOSS_BUCKETS, registry=r)
        self.staleness = Histogram("streamlearn_update_staleness", "Versions a gradient lagged when applied",
                                   buckets=STALENESS_BUCKETS, registry=r)
        # rate(ps_call) / rate(worker_step): the summary's push_fraction, live (what the push budget aims at)
        self.step_seconds = Counter("streamlearn_worker_step_seconds_total", "Seconds the workers spent in steps "
                                    "(poll, decode, join, compute, server calls), summed over workers", registry=r)
        self.ps_call = Counter("streamlearn_ps_call_seconds_total", "Seconds the workers spent in calls to the "
                               "parameter servers (pushes, pulls), by part: send; wait for a reply on its way; held, "
                               "the wait while the servers still held it (sync mode: the round)", ["part"],
                               registry=r)
        self.pushes = Counter("streamlearn_pushes_total", "Pushes to the parameter servers (one per group of "
                              "micro-batches)", registry=r)
        self.batch_seconds = Histogram("streamlearn_batch_seconds", "Seconds a worker spends on one group of "
                                       "micro-batches before pushing it (featurize, gradients, local optimizer "
                                       "steps, and any pull or reply it waits for first)", buckets=BATCH_BUCKETS,
                                       registry=r)
        self._start_known_series()
        self._recent: dict[str, float] = {}
        self._pending: dict[int, int] = {}
        self.last_checkpoint = time.time()
        self._history: IO[str] | None = None
        self._history_cadence: HistoryCadence | None = None

    def _start_known_series(self) -> None:
        """Export every known label value at 0, so ``increase()`` in an alert sees the first event of a kind."""
        for kind in DIVERGENCE_KINDS:
            self.divergence.labels(kind)
        for polarity in ("positive", "negative"):
            self.examples.labels(polarity)
        for action in ("dropped", "downweighted"):
            self.stale.labels(action)
        for outcome in JOIN_OUTCOMES:
            self.events.labels("all", outcome)
        for stage in JOIN_STAGES:
            self.join_feedback.labels(stage)

    # -- the scrape endpoint ---------------------------------------------------

    def serve(self, cfg: MetricsConfig) -> int | None:
        """Start the endpoint; returns the bound port (useful with port 0)."""
        if cfg.port is None:
            return None
        try:
            server, _ = start_http_server(cfg.port, addr=cfg.host, registry=self.registry,
                                          certfile=cfg.tls_certfile, keyfile=cfg.tls_keyfile)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ValueError(f"--metrics-port: {cfg.host}:{cfg.port} is already in use (another streamlearn or "
                             "exporter?); choose a free port, or 0 for any") from exc
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._history is not None:
            # the final state (the last interval and the drain) would otherwise be missing from the history
            self._history.write(json.dumps(self.snapshot()) + "\n")
            self._history.close()
            self._history = None

    # -- folding in a worker's step --------------------------------------------

    def _smooth(self, key: str, value: float, weight: int) -> float:
        old = self._recent.get(key)
        alpha = min(1.0, self.ewma * max(1, weight) / 8)
        new = value if old is None else old + alpha * (value - old)
        self._recent[key] = new
        return new

    def observe(self, r: StepResult) -> None:
        for (topic, outcome), n in r.counts.items():
            self.events.labels(topic, outcome).inc(n)
        for outcome in ("joined", "duplicate", "expired", "evicted"):
            if r.join.get(outcome):
                self.events.labels("all", outcome).inc(r.join[outcome])
        for reason, n in r.dead.items():
            self.dlq.labels(reason).inc(n)
        if r.join.get("feedback"):
            self.join_feedback.labels("arrived").inc(r.join["feedback"])
        if r.join.get("joined"):
            self.join_feedback.labels("joined").inc(r.join["joined"])
        s = r.stats
        applied_pos = sum(n for (_, pol), n in r.applied.items() if pol == "positive")
        applied_neg = sum(n for (_, pol), n in r.applied.items() if pol == "negative")
        self.examples.labels("positive").inc(applied_pos)
        self.examples.labels("negative").inc(applied_neg)
        if s.positive:
            self.loss.labels("positive").set(self._smooth("loss+", s.loss_positive / s.positive, s.positive))
            self.accuracy.labels("positive").set(self._smooth("acc+", s.positive_correct / s.positive,
                                                              s.positive))
        if s.negative:
            self.loss.labels("negative").set(self._smooth("loss-", s.loss_negative / s.negative, s.negative))
            self.accuracy.labels("negative").set(self._smooth("acc-", s.negative_avoided / s.negative,
                                                              s.negative))
        if s.kl_count:
            self.kl.set(self._smooth("kl", s.kl_sum / s.kl_count, s.kl_count))
        if s.grad_norm:
            self.grad_norm.set(s.grad_norm)
        self.updates.inc(len(r.staleness) - r.dropped)  # one staleness per gradient the servers saw
        for st in r.staleness:
            self.staleness.observe(st)
        if r.dropped:
            self.stale.labels("dropped").inc(r.dropped)
        if r.downweighted:
            self.stale.labels("downweighted").inc(r.downweighted)
        for positive, loss in s.losses:  # a sample of each step's examples (worker.LOSS_SAMPLE)
            self.example_loss.labels("positive" if positive else "negative").observe(loss)
        for sec in r.batch_seconds:
            self.batch_seconds.observe(sec)
        self.step_seconds.inc(r.step_seconds)
        self.ps_call.labels("send").inc(max(0.0, r.push_seconds - r.push_wait_seconds))
        self.ps_call.labels("wait").inc(max(0.0, r.push_wait_seconds - r.push_held_seconds))
        self.ps_call.labels("held").inc(r.push_held_seconds)
        self.pushes.inc(r.pushes)
        if r.replica_drift is not None:
            self.drift.labels(str(r.worker)).set(r.replica_drift)
        for (topic, partition), n in r.lag.items():
            self.lag.labels(topic, str(partition)).set(n)
        self._pending[r.worker] = r.pending
        self.pending.set(sum(self._pending.values()))
        self.version.set(r.version)


    def tick(self, history: str | None, every: float) -> None:
        """Refresh time-based gauges; append a history snapshot when one is due."""
        if self.checkpoint_age is not None:
            self.checkpoint_age.set(time.time() - self.last_checkpoint)
        if history is None:
            return
        if self._history_cadence is None:
            self._history_cadence = HistoryCadence(every, self.clock)
        if not self._history_cadence.due():
            return
        if self._history is None:
            self._history = open(history, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)
        self._history.write(json.dumps(self.snapshot()) + "\n")
        self._history.flush()

    def snapshot(self) -> dict[str, Any]:
        """Current values of every sample, keyed by name{labels}: the history file's rows."""
        out: dict[str, Any] = {"time": self.clock()}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith(("_bucket", "_created")):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out
