"""A job's actors as plain objects in this process, for driver tests without Ray (async and bounded modes)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Collection, Hashable
from typing import Any

from streamlearn.build import build_worker
from streamlearn.config import JobConfig
from streamlearn.ingest import Ingest
from streamlearn.job import ActorLost
from streamlearn.ps import merge
from streamlearn.ps.client import LocalParamClient
from streamlearn.ps.shard import Shard
from streamlearn.simulate import Simulator
from streamlearn.source import MemorySource
from streamlearn.worker import StepResult


class LocalFleet:
    """Steps run when their result is read. :meth:`kill` loses an actor as a crash does: it comes back
    rebuilt from the config with nothing in it (as Ray restarts it), and the next call raises ActorLost; or,
    ``silent``, calls answer from the fresh actor and only :meth:`check` tells."""

    def __init__(self, cfg: JobConfig, assignment: list[list[int]]) -> None:
        self.cfg, self.assignment = cfg, assignment
        self.shards = [Shard(i, cfg.ps, cfg.model, cfg.optim) for i in range(cfg.ps.shards)]
        self.client = LocalParamClient(self.shards)
        self.handles = [build_worker(cfg, w, parts, self.client) for w, parts in enumerate(assignment)]
        self.workers = len(self.handles)
        self._queued: dict[int, tuple[int, int | None, bool]] = {}
        self._ids = itertools.count()
        self._lost = False
        self._restarted = False
        self.calls: Counter[str] = Counter()

    def kill(self, worker: int | None = None, shard: int | None = None, silent: bool = False) -> None:
        if worker is not None:
            self.handles[worker] = build_worker(self.cfg, worker, self.assignment[worker], self.client)
        if shard is not None:
            self.shards[shard] = self.client.shards[shard] = Shard(shard, self.cfg.ps, self.cfg.model, self.cfg.optim)
        self._restarted = True
        self._lost = not silent

    def _check(self, name: str) -> None:
        self.calls[name] += 1
        if self._lost:
            self._lost = False
            raise ActorLost("killed by the test")

    def step(self, worker: int, limit: int | None, drain: bool = False) -> Hashable:
        ref = next(self._ids)
        self._queued[ref] = (worker, limit, drain)
        return ref

    def wait(self, steps: Collection[Hashable], timeout: float | None) -> list[Hashable]:
        return [min(steps)] if steps else []  # type: ignore[type-var]

    def result(self, step: Any) -> StepResult:
        worker, limit, drain = self._queued.pop(step)
        self._check("step")
        return self.handles[worker].step(drain, limit)

    def forget(self, steps: Collection[Hashable]) -> None:
        for s in steps:
            self._queued.pop(s, None)

    def flush(self, quiet: bool = False) -> list[StepResult]:
        if not quiet:
            self._check("flush")
        return [w.flush() for w in self.handles]

    def snapshots(self) -> list[dict[str, Any]]:
        self._check("snapshots")
        return [w.snapshot() for w in self.handles]

    def restore(self, states: list[dict[str, Any]]) -> None:
        self._check("restore")
        for w, st in zip(self.handles, states, strict=True):
            w.restore(st)

    def shard_states(self) -> list[dict[str, Any]]:
        self._check("shard_states")
        return [s.snapshot() for s in self.shards]

    def load(self, states: list[dict[str, Any]]) -> None:
        self._check("load")
        for s, st in zip(self.shards, states, strict=True):
            s.load(st)

    def set_workers(self, n: int) -> None:
        self._check("set_workers")

    def norm_sq(self) -> float:
        self._check("norm_sq")
        return sum(s.norm_sq() for s in self.shards)

    def mark_good(self) -> None:
        self._check("mark_good")
        for s in self.shards:
            s.mark_good()

    def has_good(self) -> bool:
        self._check("has_good")
        return all(s.has_good() for s in self.shards)

    def rollback(self) -> None:
        self._check("rollback")
        for s in self.shards:
            s.rollback()

    def scale_lr(self, factor: float) -> None:
        self._check("scale_lr")
        for s in self.shards:
            s.scale_lr(factor)

    def set_clip(self, norm: float | None) -> None:
        self._check("set_clip")
        for s in self.shards:
            s.clip_norm = norm

    def weights(self) -> list[Any]:
        self._check("weights")
        return merge([s.weights() for s in self.shards])

    def check(self) -> None:
        self._check("check")
        if self._restarted:
            self._restarted = False
            raise ActorLost("restarted")

    def accept(self) -> None:
        self.calls["accept"] += 1
        self._restarted = False

    def close(self) -> None:
        self.calls["close"] += 1


def stream_lineage(cfg: JobConfig) -> dict[str, int]:
    """Examples per partition in one pass over the job's embedded stream: what an exactly-once model holds."""
    ingest = Ingest(cfg.schema, cfg.join)
    source = MemorySource(Simulator(cfg.sim, cfg.data).events(block=64), cfg.partitions, codec=cfg.codec)
    per_partition: Counter[int] = Counter()
    while not source.exhausted:
        per_partition.update(e.partition for e in ingest.process(source.next_batch(cfg.max_records)).examples)
    return {str(p): n for p, n in sorted(per_partition.items())}
