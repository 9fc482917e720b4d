"""A job from start to summary: the partitions and the actors, a restore from the newest checkpoint, the
driver loop, the summary, the shutdown."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

from streamlearn.build import assign, partition_count
from streamlearn.config import JobConfig
from streamlearn.job.checkpointer import Checkpointer
from streamlearn.job.fleet import Fleet
from streamlearn.job.guard import ShardGuard
from streamlearn.job.loop import Hooks, StepLoop
from streamlearn.job.stop import Stop
from streamlearn.job.summary import Ending, Totals, positions, summarize
from streamlearn.metrics import Metrics

FleetFactory = Callable[[JobConfig, list[list[int]]], Fleet]


class Job:
    """``run()`` returns the summary; :attr:`weights` holds the final model after it (the actors are gone).

    ``fleet`` builds the actors (default: Ray's, starting a local Ray unless
    one runs); ``hooks`` acts at named moments (tests, benchmarks).
    """

    def __init__(self, cfg: JobConfig, progress: Callable[[str], None] | None = None,
                 handle_signals: bool = False, hooks: Hooks | None = None, fleet: FleetFactory | None = None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.handle_signals = handle_signals  # SIGTERM/SIGINT: drain, checkpoint, summary
        self.hooks = hooks or Hooks()
        self.metrics = Metrics(checkpoints=cfg.checkpoint.dir is not None)
        self.stop = Stop(cfg.stop, embedded=cfg.source == "embedded")
        self.restored_from: str | None = None
        self.weights: list[Any] = []
        self.metrics_port: int | None = None
        self._fleet_factory = fleet

    def request_stop(self, reason: str = "signal") -> None:
        self.stop.request(reason)

    @property
    def totals(self) -> Totals:
        return self.loop.totals

    @property
    def checkpoints(self) -> int:
        return self.checkpointer.saved

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.assignment = assign(partition_count(cfg), cfg.workers)  # fail fast on the topics, before Ray starts
        make = self._fleet_factory or self._ray_fleet()
        if self.handle_signals:
            install_signal_handlers(self)  # after ray.init, which installs its own
        self.metrics_port = self.metrics.serve(cfg.metrics)
        if self.metrics_port is not None and self.progress:
            self.progress(f"metrics on http://{cfg.metrics.host}:{self.metrics_port}/metrics")
        try:
            self.fleet = make(cfg, self.assignment)
            try:
                return self._run(self.fleet)
            finally:
                self.fleet.close()
        finally:
            self.metrics.close()

    def _run(self, fleet: Fleet) -> dict[str, Any]:
        self.metrics.workers.set(fleet.workers)
        self.checkpointer = Checkpointer(self.cfg, fleet, self.assignment)
        self.guard = ShardGuard(self.cfg.divergence, fleet, self.metrics)
        self.loop = StepLoop(self.cfg, fleet, self.checkpointer, self.guard, self.stop, self.metrics, self.hooks,
                             self.progress)
        self.hooks.ready()
        found = self.checkpointer.latest()
        if found is not None:
            self.loop.lineage = self.checkpointer.restore(found[1])
            self.loop.totals.restart(self.checkpointer.restored_waiting)
            self.guard.restored()
            self.restored_from = str(found[0])
            if self.progress:
                self.progress(f"restored {found[0].name} (model version {found[1]['version']})")
        self.stop.start()
        return self.loop.run(self._finish)

    def _finish(self) -> dict[str, Any]:
        """The final reads, after the drain: where the sources stand and the model; then the summary."""
        seconds = time.monotonic() - self.stop.started
        self.hooks.finishing()
        snapshots, weights = self.fleet.snapshots(), self.fleet.weights()
        self.fleet.check()  # else a restarted actor's fresh state would be reported
        self.weights = weights
        loop, ck = self.loop, self.checkpointer
        return summarize(self.cfg, loop.totals, Ending(
            lineage=loop.lineage, positions=positions(snapshots), divergence_events=self.guard.policy.detector.events,
            rollbacks=self.guard.policy.rollbacks, workers=self.fleet.workers, recoveries=ck.recoveries,
            replayed=loop.budget.replayed, restored_from=self.restored_from, checkpoints=ck.saved,
            stop_reason=self.stop.reason, seconds=seconds))

    def _ray_fleet(self) -> FleetFactory:
        from streamlearn.job.ray_fleet import RayFleet

        self._start_ray()
        return RayFleet

    def _start_ray(self) -> None:
        from streamlearn.cluster import start_ray

        start_ray(self.cfg.ray)


def install_signal_handlers(job: Job) -> None:
    """SIGTERM / SIGINT: stop taking new steps, drain, checkpoint, print the summary."""

    def handler(signum: int, _frame: object) -> None:
        job.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
