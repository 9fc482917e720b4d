"""The job's actors on Ray: the :class:`~streamlearn.job.fleet.Fleet` the driver runs (the only module of the
job that imports ray). A Ray error from a call becomes :class:`~streamlearn.job.fleet.ActorLost`."""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import Collection, Hashable, Iterator
from typing import Any

import ray
from ray.exceptions import RayError

from streamlearn.actors import ParamServerActor, WorkerActor, placed
from streamlearn.config import JobConfig
from streamlearn.job.fleet import ActorLost
from streamlearn.ps import merge
from streamlearn.worker import StepResult

log = logging.getLogger("streamlearn.job")
SETTLE_SECONDS = 60.0  # recovery: the longest wait for a lost step or push before giving up on it


def _process_id(_actor: Any) -> str:
    return str(ray.get_runtime_context().get_worker_id())


@contextlib.contextmanager
def _lost() -> Iterator[None]:
    try:
        yield
    except RayError as exc:
        raise ActorLost(f"{type(exc).__name__}: {exc}") from exc


class RayFleet:
    def __init__(self, cfg: JobConfig, assignment: list[list[int]]) -> None:
        # the workers find the shards by name (unique per fleet: a driver may run several jobs in turn)
        names = [f"streamlearn-ps-{uuid.uuid4().hex[:12]}-{i}" for i in range(cfg.ps.shards)]
        self.shards = [placed(ParamServerActor, cfg.ray.actor_resource, name).remote(
            i, cfg.ps, cfg.model, cfg.optim, len(assignment)) for i, name in enumerate(names)]
        worker: Any = placed(WorkerActor, cfg.ray.actor_resource)
        self.handles = [worker.remote(w, cfg, parts, names) for w, parts in enumerate(assignment)]
        self.workers = len(self.handles)
        # every actor constructed (sources connected, servers built) before any idle clock starts
        with _lost():
            ray.get([w.ready.remote() for w in self.handles] + [s.norm_sq.remote() for s in self.shards])
        self._seen = self._incarnations()

    @property
    def actors(self) -> list[Any]:
        """Every actor handle: the workers', then the shards'."""
        return [*self.handles, *self.shards]

    def step(self, worker: int, limit: int | None, drain: bool = False) -> Hashable:
        ref: Hashable = self.handles[worker].step.remote(drain, limit)
        return ref

    def wait(self, steps: Collection[Hashable], timeout: float | None) -> list[Hashable]:
        ready, _ = ray.wait(list(steps), num_returns=1, timeout=timeout)
        return list(ready)

    def result(self, step: Any) -> StepResult:
        with _lost():
            r: StepResult = ray.get(step)
        return r

    def forget(self, steps: Collection[Any]) -> None:
        for ref in steps:
            try:
                ray.get(ref, timeout=SETTLE_SECONDS)
            except Exception as err:  # the failed and the cancelled steps: their work is replayed
                log.debug("in-flight step lost: %s", err)

    def flush(self, quiet: bool = False) -> list[StepResult]:
        if not quiet:
            return self._all(self.handles, "flush")
        out = []
        for w in self.handles:  # a push still in flight must not land after a restore
            try:
                out.append(ray.get(w.flush.remote(), timeout=SETTLE_SECONDS))
            except Exception as err:
                log.debug("in-flight push lost: %s", err)
        return out

    def snapshots(self) -> list[dict[str, Any]]:
        return self._all(self.handles, "snapshot")

    def restore(self, states: list[dict[str, Any]]) -> None:
        with _lost():
            ray.get([w.restore.remote(st) for w, st in zip(self.handles, states, strict=True)])

    def shard_states(self) -> list[dict[str, Any]]:
        return self._call("snapshot")

    def load(self, states: list[dict[str, Any]]) -> None:
        with _lost():
            ray.get([s.load.remote(st) for s, st in zip(self.shards, states, strict=True)])

    def set_workers(self, n: int) -> None:
        self._all(self.shards, "set_workers", n)

    def norm_sq(self) -> float:
        return math.fsum(self._call("norm_sq"))

    def mark_good(self) -> None:
        self._call("mark_good")

    def has_good(self) -> bool:
        return all(self._call("has_good"))

    def rollback(self) -> None:
        self._call("rollback")

    def scale_lr(self, factor: float) -> None:
        self._call("scale_lr", factor)

    def set_clip(self, norm: float | None) -> None:
        self._call("set_clip", norm)

    def weights(self) -> list[Any]:
        return merge(self._call("weights"))

    def check(self) -> None:
        now = self._incarnations()
        if now != self._seen:
            restarted = sum(a != b for a, b in zip(now, self._seen, strict=True))
            self._seen = now
            raise ActorLost(f"{restarted} actor(s) restarted")

    def accept(self) -> None:
        self._seen = self._incarnations()

    def _incarnations(self) -> list[str]:
        """Each actor's Ray worker process id: a restart runs the actor in another process."""
        with _lost():
            return list(ray.get([a.__ray_call__.remote(_process_id) for a in self.actors]))

    def close(self) -> None:
        try:
            ray.get([w.close.remote() for w in self.handles], timeout=30)
        except Exception as exc:  # closing is best effort: the job's result is already final
            log.warning("closing workers: %s", exc)
        for a in self.actors:
            ray.kill(a, no_restart=True)

    def _all(self, actors: list[Any], method: str, *args: Any) -> list[Any]:
        with _lost():
            return list(ray.get([getattr(a, method).remote(*args) for a in actors]))

    def _call(self, method: str, *args: Any) -> list[Any]:
        with _lost():
            return list(ray.get([getattr(s, method).remote(*args) for s in self.shards]))
