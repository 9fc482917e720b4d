"""A job's checkpoints: pause the workers, save the whole job as one checkpoint, restore it (regrouping the
workers' parts for another worker count), and recover from the newest after an actor was lost.

A checkpoint pauses the workers between steps (no push in flight), so the
shards' weights and the workers' offsets, join state and lineage agree.
Recovery is global, as in Flink: Ray restarts a lost actor (``max_restarts``)
and every shard and worker is restored from the newest checkpoint; the
sources seek to its offsets and replay, so every event's update is in the
surviving model exactly once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from streamlearn import checkpoint
from streamlearn.config import JobConfig
from streamlearn.job.fleet import ActorLost, Fleet
from streamlearn.job.regroup import regroup
from streamlearn.worker import StepResult

log = logging.getLogger("streamlearn.job")


class Checkpointer:
    def __init__(self, cfg: JobConfig, fleet: Fleet, assignment: list[list[int]],
                 retry_seconds: float = 120.0) -> None:
        self.cfg, self.fleet, self.assignment = cfg, fleet, assignment
        self.retry_seconds = retry_seconds  # recovery: how long lost actors may take to come back
        self.saved = 0  # checkpoints written by this job
        self.recoveries = 0
        self.last: str | None = None  # the newest checkpoint written
        self.restored_waiting = 0  # events in the joins of the checkpoint last restored

    def pause(self, inflight: dict[Hashable, int], fold: Callable[[StepResult], None]) -> None:
        """Let the in-flight steps finish and fold them, then the pushes still in flight; queue nothing.
        In sync mode each finished worker leaves the rounds, so the others' rounds close without it."""
        while inflight:
            for step in self.fleet.wait(inflight, None):
                inflight.pop(step)
                fold(self.fleet.result(step))
            if self.cfg.ps.mode == "sync" and inflight:
                self.fleet.set_workers(len(inflight))
        for r in self.fleet.flush():
            fold(r)

    def save(self, lineage: Counter[tuple[int, str]]) -> Path:
        """Write the paused job: shards, workers, assignment and the model's lineage, in one file."""
        assert self.cfg.checkpoint.dir is not None
        shards, workers = self.fleet.shard_states(), self.fleet.snapshots()
        self.fleet.check()  # a restarted actor's fresh state must not be saved
        state = {"format": checkpoint.FORMAT, "version": shards[0]["version"], "shards": shards, "workers": workers,
                 "assignment": self.assignment, "lineage": dict(lineage), "model": self.cfg.model,
                 "classes": self.cfg.classes}
        path = checkpoint.save(self.cfg.checkpoint.dir, state, self.cfg.checkpoint.keep)
        self.saved += 1
        self.last = str(path)
        log.info("checkpoint %s (model version %d)", path.name, state["version"])
        return path

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        return checkpoint.latest(self.cfg.checkpoint.dir)

    def restore(self, state: dict[str, Any]) -> Counter[tuple[int, str]]:
        """Load every shard and worker from ``state``; returns the lineage of the model it holds."""
        if state.get("model") != self.cfg.model:
            raise ValueError(f"checkpoint model {state.get('model')} does not match the configured model "
                             f"{self.cfg.model}: use another --checkpoint-dir")
        shards = self.cfg.ps.shards
        if len(state["shards"]) != shards:
            raise ValueError(f"checkpoint has {len(state['shards'])} parameter-server shards, this job "
                             f"{shards}: run with --ps-shards {len(state['shards'])}")
        workers = state["workers"]
        if state["assignment"] != self.assignment:
            log.warning("checkpoint partitions %s are read by %d workers now, as %s", state["assignment"],
                        len(self.assignment), self.assignment)
            workers = regroup(workers, self.assignment)
        self.fleet.load(state["shards"])
        self.fleet.restore(workers)
        self.restored_waiting = sum(len(j["preds"]) + len(j["feedback"]) for w in workers
                                    for j in w["ingest"]["joiners"].values())
        return Counter(state["lineage"])

    def recover(self, lost: list[Hashable], exc: Exception) -> Counter[tuple[int, str]]:
        """An actor was lost: let the steps in flight end, then restore everything from the newest checkpoint
        (retried while the lost actor restarts); returns the restored lineage."""
        self.recoveries += 1
        log.warning("actor lost (%s): restoring all actors from the newest checkpoint", exc)
        self.fleet.forget(lost)
        self.fleet.flush(quiet=True)  # a push still in flight must not land after the restore
        found = self.latest()
        if found is None:
            raise RuntimeError("an actor was lost and there is no checkpoint to recover from (set "
                               "--checkpoint-dir)") from exc
        deadline = time.monotonic() + self.retry_seconds
        while True:
            try:
                self.fleet.accept()
                return self.restore(found[1])
            except ActorLost:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # the actor is still restarting
