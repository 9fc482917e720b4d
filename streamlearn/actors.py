"""The Ray wiring: parameter-server and worker actors, and the client between them.

The only module that applies ``ray.remote``. The logic lives in plain classes
(:class:`~streamlearn.paramserver.Shard`, :class:`~streamlearn.worker.Worker`).
"""

from __future__ import annotations

import asyncio
import math
import os
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import ray
import torch

from streamlearn.learner import OptimConfig
from streamlearn.model import ModelConfig, build_model
from streamlearn.paramserver import InOrder, Layout, PSConfig, PushResult, RowLayout, Shard, combine
from streamlearn.worker import StepResult, tune_gc

# Ray passes a call's argument (and its return value) inline up to max_direct_call_object_size, 100 KiB by
# default, and through the shared-memory object store above it. A sparse model's push is larger: its rows'
# weight and accumulator changes in float64, ~160 KB for the ~1,000 rows a group of 64 micro-batches of 20
# named features touches. Measured here: a 160 KB argument's round trip 1.7-2.2 ms through the store, 1.0-1.1 ms
# inline (90 KB: ~1.0 ms either way; 1.2 MB: 2.8 ms through the store, 3.5 ms inline). Processes read it
# from the environment when they start: set before ray.init() for a local Ray, in the image for a cluster.
INLINE_BYTES = 512 * 1024
INLINE_ENV = "RAY_max_direct_call_object_size"


def inline_larger_calls() -> None:
    """Before starting a local Ray: pass calls of up to :data:`INLINE_BYTES` inline (a user's own setting
    of the variable wins)."""
    os.environ.setdefault(INLINE_ENV, str(INLINE_BYTES))


ACTOR_SHARE = 0.001  # of the placement resource per actor: pods offer 1000, so it never limits the count


def placed(actor_class: Any, resource: str | None) -> Any:
    """``actor_class`` bound to the nodes offering the custom ``resource`` and spread over them (without
    SPREAD they pack onto one node); as is when ``resource`` is None."""
    if resource is None:
        return actor_class
    return actor_class.options(resources={resource: ACTOR_SHARE}, scheduling_strategy="SPREAD")


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0)
class ParamServerActor:
    """One shard. Async actor: a sync-mode push waits for its round to close."""

    def __init__(self, index: int, cfg: PSConfig, model: ModelConfig, optim: OptimConfig, workers: int) -> None:
        torch.set_num_threads(1)
        self.shard = Shard(index, cfg, model, optim)
        self.cfg, self.workers = cfg, workers
        self._closed = asyncio.Event()
        self._round = 0
        self._deadline: asyncio.TimerHandle | None = None  # the open round's timeout
        self._round_size = 0
        self._order = InOrder()
        self._width = sum(p.numel() for p in self.shard.params)  # columns of this shard's flat state
        self._state_rows = len(self.shard.flat().rows)  # weights, and Adagrad's sums if any

    async def push_update(self, message: bytes) -> bytes:
        """A dense model's update, packed by :func:`pack_update`: one addition, however many steps it carries
        (sync mode: the round's average, once the round closed). The reply is packed by :func:`pack_reply`."""
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
        """A sparse model's update, packed by :func:`pack_rows`: added to its rows (sync mode: averaged into
        the round); the reply, packed by :func:`pack_reply`, carries those rows' state after."""
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

    async def call(self, method: str, *args: Any) -> Any:
        """Guard and checkpoint operations on the shard: state, load, mark_good, rollback, scale_lr, ..."""
        if method == "set_clip":
            self.shard.clip_norm = args[0]
            return None
        result = getattr(self.shard, method)(*args)
        if method == "load":  # recovery: pushes waiting on the old round belong to discarded steps
            self._round += 1
            self._closed.set()
            self._closed = asyncio.Event()
        return result


class RayParamClient:
    """Pushes to and pulls from every shard; shard 0's version is the model's."""

    def __init__(self, shards: Sequence[Any], layout: Layout, rows_layout: RowLayout | None = None) -> None:
        self.shards = list(shards)
        self.layout = layout  # a dense model's flat states
        self.rows_layout = rows_layout  # a sparse model's row states
        self.token = uuid.uuid4().bytes  # this client's pushes are applied in the order of ``seq``
        self.seq = 0

    @classmethod
    def of(cls, shards: Sequence[Any], model: ModelConfig) -> RayParamClient:
        full = build_model(model)
        shapes, rows = tuple(tuple(p.shape) for p in full.parameters()), full.row_params()
        return cls(shards, Layout(shapes, len(shards)), RowLayout.of(shapes, rows, len(shards)) if rows else None)

    @property
    def rows(self) -> RowLayout:
        if self.rows_layout is None:
            raise TypeError("row updates need a model with row parameters (the hashed model)")
        return self.rows_layout

    def submit_update(self, worker: int, update: np.ndarray, count: int, version: int,
                      pull: bool = False) -> _Pending:
        self.seq += 1
        head = UpdateHead(self.token, self.seq, worker, version, count, pull)
        return _Pending([s.push_update.remote(pack_update(head, u))
                         for s, u in zip(self.shards, self.layout.split(update), strict=True)],
                        lambda replies: self._update_reply(replies, count, len(update)))

    def _update_reply(self, replies: list[bytes], count: int, state_rows: int) -> tuple[PushResult, np.ndarray | None]:
        results = [unpack_reply(r, count, state_rows) for r in replies]
        states = [r[1] for r in results if r[1] is not None]
        return combine([r[0] for r in results]), (self.layout.merge(states) if states else None)

    def submit_rows(self, worker: int, rows: np.ndarray, update: np.ndarray, count: int, version: int) -> _Pending:
        self.seq += 1
        head = UpdateHead(self.token, self.seq, worker, version, count, True)
        parts = self.rows.split(rows, update)
        counts = [len(r) for r, _ in parts]
        refs = [s.push_rows.remote(pack_rows(head, r, u)) for s, (r, u) in zip(self.shards, parts, strict=True)]
        return _Pending(refs, lambda replies: self._rows_reply(replies, count, len(update), counts))

    def _rows_reply(self, replies: list[bytes], count: int, state_rows: int,
                    counts: list[int]) -> tuple[PushResult, np.ndarray]:
        results = [unpack_reply(r, count, state_rows) for r in replies]
        return combine([r[0] for r in results]), self.rows.merge([r[1] for r in results if r[1] is not None],
                                                                 counts)

    def pull_rows(self, rows: np.ndarray) -> tuple[int, np.ndarray]:
        parts = self.rows.cut(rows)
        results = ray.get([s.pull_rows.remote(r) for s, r in zip(self.shards, parts, strict=True)])
        return results[0][0], self.rows.merge([r[1] for r in results], [len(r) for r in parts])

    def pull(self) -> tuple[int, np.ndarray]:
        results = ray.get([s.pull.remote() for s in self.shards])
        return results[0][0], self.layout.merge([r[1] for r in results])


class _Pending:
    """The shards' replies to one push, fetched (and joined by ``finish``) when the worker settles it."""

    def __init__(self, refs: list[Any], finish: Callable[[list[Any]], tuple[PushResult, Any]]) -> None:
        self.refs, self.finish = refs, finish

    def result(self) -> tuple[PushResult, Any]:
        return self.finish(ray.get(self.refs))

    def done(self) -> bool:
        ready, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=0, fetch_local=False)
        return len(ready) == len(self.refs)


# -- an update push on the wire ----------------------------------------------------
# Ray serialises each argument of a call on its own, ~15-20 us apiece for small ones, and a bytes
# argument for next to nothing; a push is on the workers' hot path, so an update and its reply each
# travel as one bytes object: a fixed little-endian header, then the float64 update / float32 state.


class UpdateHead(NamedTuple):
    client: bytes  # 16 bytes: the sending client (pushes of one client apply in ``seq`` order)
    seq: int
    worker: int
    version: int  # the version the update's first step started from
    steps: int  # gradients (local optimizer steps) the update carries
    pull: bool  # the reply carries the shard's state after applying it


_UPDATE_HEAD = struct.Struct("<16sqiqi?")
_ROWS = struct.Struct("<q")  # a sparse update's row count
# version, applied, dropped, downweighted, staleness, lr, clip (NaN: none), held seconds
_REPLY_HEAD = struct.Struct("<qiiiqddd")


def pack_update(head: UpdateHead, update: np.ndarray) -> bytes:
    return _UPDATE_HEAD.pack(*head) + np.ascontiguousarray(update, dtype=np.float64).tobytes()


def unpack_update(message: bytes, width: int) -> tuple[UpdateHead, np.ndarray]:
    head = UpdateHead(*_UPDATE_HEAD.unpack_from(message))
    update = np.frombuffer(message, dtype=np.float64, offset=_UPDATE_HEAD.size).reshape(-1, width)
    return head, update


def pack_reply(result: PushResult, state: np.ndarray | None) -> bytes:
    stale = result.staleness[0] if result.staleness else 0
    clip = math.nan if result.clip_norm is None else result.clip_norm
    head = _REPLY_HEAD.pack(result.version, result.applied, result.dropped, result.downweighted, stale,
                            result.lr if result.lr is not None else math.nan, clip, result.held)
    return head if state is None else head + np.ascontiguousarray(state, dtype=np.float32).tobytes()


def pack_rows(head: UpdateHead, rows: np.ndarray, update: np.ndarray) -> bytes:
    """A sparse model's update: the header, the row count, the rows (int64), the float64 (A, W) update."""
    return (_UPDATE_HEAD.pack(*head) + _ROWS.pack(len(rows)) + np.ascontiguousarray(rows, dtype=np.int64).tobytes()
            + np.ascontiguousarray(update, dtype=np.float64).tobytes())


def unpack_rows(message: bytes, state_rows: int) -> tuple[UpdateHead, np.ndarray, np.ndarray]:
    head = UpdateHead(*_UPDATE_HEAD.unpack_from(message))
    (n,) = _ROWS.unpack_from(message, _UPDATE_HEAD.size)
    at = _UPDATE_HEAD.size + _ROWS.size
    rows = np.frombuffer(message, dtype=np.int64, count=n, offset=at)
    update = np.frombuffer(message, dtype=np.float64, offset=at + 8 * n).reshape(state_rows, -1)
    return head, rows, update


def unpack_reply(message: bytes, count: int, rows: int) -> tuple[PushResult, np.ndarray | None]:
    version, applied, dropped, downweighted, stale, lr, clip, held = _REPLY_HEAD.unpack_from(message)
    result = PushResult(applied=applied, dropped=dropped, downweighted=downweighted, staleness=[stale] * count,
                        kept=[not dropped] * count, version=version, lr=None if math.isnan(lr) else lr,
                        clip_norm=None if math.isnan(clip) else clip, held=held)
    if len(message) == _REPLY_HEAD.size:
        return result, None
    return result, np.frombuffer(message, dtype=np.float32, offset=_REPLY_HEAD.size).reshape(rows, -1)


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0)
class WorkerActor:
    """A worker on its partitions; built from the job config inside the actor's process."""

    def __init__(self, worker: int, cfg: Any, partitions: list[int], shards: list[Any]) -> None:
        torch.set_num_threads(1)
        tune_gc()
        from streamlearn.build import build_worker

        self.worker = build_worker(cfg, worker, partitions, RayParamClient.of(shards, cfg.model))

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
