"""The Ray wiring: parameter-server and worker actors.

The only module that applies ``ray.remote``. The logic lives in plain classes
(:class:`~streamlearn.ps.shard.Shard`, :class:`~streamlearn.worker.Worker`);
workers reach the servers through :class:`~streamlearn.ps.client.RayParamClient`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import numpy as np
import ray

from streamlearn.cluster import INLINE_BYTES as INLINE_BYTES
from streamlearn.cluster import INLINE_ENV as INLINE_ENV
from streamlearn.cluster import inline_larger_calls as inline_larger_calls
from streamlearn.learner import OptimConfig
from streamlearn.model import ModelConfig
from streamlearn.ps.client import RayParamClient
from streamlearn.ps.config import PSConfig
from streamlearn.ps.shard import InOrder, Shard
from streamlearn.ps.wire import PushResult, UpdateHead, pack_reply, unpack_rows, unpack_update
from streamlearn.worker import StepResult, tune_gc

ACTOR_SHARE = 0.001  # of the placement resource per actor: pods offer 1000, so it never limits the count


def placed(actor_class: Any, resource: str | None, name: str | None = None) -> Any:
    """``actor_class`` bound to the nodes offering the custom ``resource`` and spread over them (without
    SPREAD they pack onto one node), and named ``name`` if given; as is when both are None."""
    options: dict[str, Any] = {"name": name} if name else {}
    if resource is not None:
        options.update(resources={resource: ACTOR_SHARE}, scheduling_strategy="SPREAD")
    return actor_class.options(**options) if options else actor_class


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0)
class ParamServerActor:
    """One shard. Async actor: a sync-mode push waits for its round to close."""

    def __init__(self, index: int, cfg: PSConfig, model: ModelConfig, optim: OptimConfig, workers: int) -> None:
        self.shard = Shard(index, cfg, model, optim)
        self.cfg, self.workers = cfg, workers
        self._closed = asyncio.Event()
        self._round = 0
        self._deadline: asyncio.TimerHandle | None = None  # the open round's timeout
        self._round_size = 0
        self._order = InOrder()
        self._width = sum(p.size for p in self.shard.params)  # columns of this shard's flat state
        self._state_rows = len(self.shard.flat().rows)  # weights, and Adagrad's sums if any

    async def push_update(self, message: bytes) -> bytes:
        """A dense model's update (:func:`~streamlearn.ps.wire.pack_update`): one addition, however many steps
        it carries (sync mode: the round's average, once the round closed); the reply packed by ``pack_reply``."""
        start = time.perf_counter()
        head, update = unpack_update(message, self._width)
        await self._order.turn(head.client.hex(), head.seq)
        if self.cfg.mode == "sync":
            result = await self._in_round(head, update, None)
        else:
            result = self.shard.add_update(update, head.steps, head.version)
        state = self.shard.flat().read() if head.pull else None
        result.held = time.perf_counter() - start
        return pack_reply(result, state)

    async def push_rows(self, message: bytes) -> bytes:
        """A sparse model's update (:func:`~streamlearn.ps.wire.pack_rows`): added to its rows (sync mode:
        averaged into the round); the reply (``pack_reply``) carries those rows' state after."""
        start = time.perf_counter()
        head, rows, update = unpack_rows(message, self._state_rows)
        await self._order.turn(head.client.hex(), head.seq)
        if self.cfg.mode == "sync":
            result = await self._in_round(head, update, rows)
        else:
            result = self.shard.add_update(update, head.steps, head.version, rows)
        state = self.shard.row_state().read(rows)
        result.held = time.perf_counter() - start
        return pack_reply(result, state)

    async def _in_round(self, head: UpdateHead, update: np.ndarray, rows: np.ndarray | None) -> PushResult:
        """Sync mode: put a worker's update (no steps: it had nothing) in the open round; return once the
        round closed, when every worker's update is in or sync_timeout_seconds after it opened."""
        ok = self.shard.add_to_round(head.worker, update, head.steps, rows)
        closed = self._closed
        if len(self.shard.round) == 1:  # a timer, not a sleeping task per round: rounds close in ~1 ms
            self._deadline = asyncio.get_running_loop().call_later(self.cfg.sync_timeout_seconds, self._timeout,
                                                                   self._round)
        if len(self.shard.round) >= self.workers:
            self._close_round()
        await closed.wait()
        n = head.steps
        return self.shard.stamp(PushResult(applied=n if ok else 0, dropped=0 if ok else n, kept=[ok] * n,
                                           staleness=[0] * n))

    async def pull_rows(self, rows: np.ndarray) -> tuple[int, np.ndarray]:
        """A sparse model's state on ``rows`` (this shard's own numbering), accumulators included."""
        return self.shard.version, self.shard.row_state().read(rows)

    def _close_round(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._round_size = self.shard.close_round()
        self._round += 1
        self._closed.set()
        self._closed = asyncio.Event()

    def _timeout(self, round_id: int) -> None:
        if self._round == round_id and self.shard.round:
            self._close_round()

    async def pull(self) -> tuple[int, np.ndarray]:
        """A dense model's flat state (weights and accumulators)."""
        return self.shard.version, self.shard.flat().read()

    async def set_workers(self, workers: int) -> None:
        """Sync mode: how many workers a round waits for. The driver lowers it as workers stop stepping; a
        round that already holds that many updates closes now, not sync_timeout_seconds later."""
        self.workers = workers
        if self.cfg.mode == "sync" and self.shard.round and len(self.shard.round) >= workers:
            self._close_round()

    # -- guard and checkpoint operations (the driver's) ----------------------

    async def norm_sq(self) -> float:
        return self.shard.norm_sq()

    async def weights(self) -> list[np.ndarray]:
        """This shard's rows of every parameter."""
        return self.shard.weights()

    async def snapshot(self) -> dict[str, Any]:
        """The shard's state for a checkpoint (plain arrays)."""
        return self.shard.snapshot()

    async def load(self, state: dict[str, Any]) -> None:
        """Take a checkpoint's state; pushes waiting on the old round belong to discarded steps."""
        self.shard.load(state)
        self._round += 1
        self._closed.set()
        self._closed = asyncio.Event()

    async def mark_good(self) -> None:
        self.shard.mark_good()

    async def has_good(self) -> bool:
        return self.shard.has_good()

    async def rollback(self) -> bool:
        return self.shard.rollback()

    async def scale_lr(self, factor: float) -> None:
        self.shard.scale_lr(factor)

    async def set_clip(self, clip_norm: float | None) -> None:
        self.shard.clip_norm = clip_norm

    async def imported(self, module: str) -> bool:
        """Whether this actor's process has imported ``module`` (tests: no torch in a linear job)."""
        return module in sys.modules


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0)
class WorkerActor:
    """A worker on its partitions; built from the job config inside the actor's process.

    The shards come by name: an actor handle among the constructor's arguments would put them in the object
    store, from where a restart cannot count on getting them back (Ray warns of it at every start)."""

    def __init__(self, worker: int, cfg: Any, partitions: list[int], shards: list[str]) -> None:
        tune_gc()
        from streamlearn.build import build_worker

        handles = [ray.get_actor(name) for name in shards]
        self.worker = build_worker(cfg, worker, partitions, RayParamClient.of(handles, cfg.model))

    def ready(self) -> bool:
        return True

    def step(self, drain: bool = False, limit: int | None = None) -> StepResult:
        return self.worker.step(drain, limit)

    def flush(self) -> StepResult:
        return self.worker.flush()

    def snapshot(self) -> dict[str, Any]:
        return self.worker.snapshot()

    def restore(self, state: dict[str, Any]) -> None:
        self.worker.restore(state)

    def close(self) -> None:
        close = getattr(self.worker.source, "close", None)
        if callable(close):
            close()
        if self.worker.dead_letters is not None:
            self.worker.dead_letters.close()

    def imported(self, module: str) -> bool:
        """Whether this actor's process has imported ``module`` (tests: no torch in a linear job)."""
        return module in sys.modules
