"""The client a worker reaches the parameter servers through: in process, or Ray actors.

:class:`ParamClient` is what :class:`~streamlearn.worker.Worker` needs;
:class:`LocalParamClient` holds :class:`~streamlearn.ps.shard.Shard` objects in
process (tests, single-process runs), :class:`RayParamClient` calls
:class:`~streamlearn.actors.ParamServerActor` shards (ray is imported only by
its calls, so a worker built without Ray never loads it).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from streamlearn.ps.layout import Layout, RowLayout
from streamlearn.ps.shard import Shard
from streamlearn.ps.wire import PushResult, UpdateHead, combine, pack_rows, pack_update, unpack_reply

if TYPE_CHECKING:
    from streamlearn.model import ModelConfig


class PendingPush(Protocol):
    def result(self) -> tuple[PushResult, np.ndarray | None]:
        """Wait for the servers' reply."""
        ...

    def done(self) -> bool:
        """Whether the reply is there (result() would not wait)."""
        ...


class ParamClient(Protocol):
    def submit_update(self, worker: int, update: np.ndarray, count: int, version: int,
                      pull: bool = False) -> PendingPush:
        """Send a dense update (the change of ``count`` local steps) without waiting; with ``pull``, the reply
        also carries the servers' flat state after applying it."""
        ...

    def submit_rows(self, worker: int, rows: np.ndarray, update: np.ndarray, count: int,
                    version: int) -> PendingPush:
        """Send a sparse model's update on ``rows`` (sorted) without waiting; the reply carries those rows'
        state after applying it (a :class:`~streamlearn.ps.state.RowState` array)."""
        ...

    def pull(self) -> tuple[int, np.ndarray]:
        """A dense model's flat state (weights and accumulators, :class:`~streamlearn.ps.state.FlatState`)."""
        ...

    def pull_rows(self, rows: np.ndarray) -> tuple[int, np.ndarray]:
        """A sparse model's state (weights and accumulators) on ``rows`` (sorted)."""
        ...


@dataclass
class Done:
    """A push that already happened (in process): its reply."""

    reply: tuple[PushResult, Any]
    ready: bool = False  # what done() says: False keeps the worker's pipelined path (a push in flight)

    def result(self) -> tuple[PushResult, Any]:
        return self.reply

    def done(self) -> bool:
        return self.ready


class LocalParamClient:
    """In-process shards behind the worker's ParamClient interface (async and bounded modes).

    For tests and single-process runs; the Ray client is
    :class:`RayParamClient`. Replies have the Ray
    client's shapes: a dense model's flat state, a sparse model's rows.
    ``replies_ready``: whether a push's reply reports itself there before the
    worker's next group (a Ray reply usually is; False exercises the worker's
    merge with a push still in flight).
    """

    def __init__(self, shards: Sequence[Shard], replies_ready: bool = False) -> None:
        if any(s.cfg.mode == "sync" for s in shards):
            raise ValueError("LocalParamClient: sync rounds need the Ray actor (it waits for every worker)")
        self.shards = list(shards)
        self.replies_ready = replies_ready
        self.layout = Layout(self.shards[0].shapes, len(self.shards))
        if self.shards[0].sparse:
            self.rows_layout = RowLayout.of(self.shards[0].shapes, self.shards[0].sparse, len(self.shards))

    def submit_update(self, worker: int, update: np.ndarray, count: int, version: int,
                      pull: bool = False) -> Done:
        results = [s.add_update(u, count, version) for s, u in zip(self.shards, self.layout.split(update),
                                                                   strict=True)]
        return Done((combine(results), self.pull()[1] if pull else None), self.replies_ready)

    def submit_rows(self, worker: int, rows: np.ndarray, update: np.ndarray, count: int, version: int) -> Done:
        parts = self.rows_layout.split(rows, update)
        results = [s.add_update(u, count, version, r) for s, (r, u) in zip(self.shards, parts, strict=True)]
        state = self.rows_layout.merge([s.row_state().read(r) for s, (r, _) in zip(self.shards, parts, strict=True)],
                                       [len(r) for r, _ in parts])
        return Done((combine(results), state), self.replies_ready)

    def pull_rows(self, rows: np.ndarray) -> tuple[int, np.ndarray]:
        parts = self.rows_layout.cut(rows)
        return self.shards[0].version, self.rows_layout.merge(
            [s.row_state().read(r) for s, r in zip(self.shards, parts, strict=True)], [len(r) for r in parts])

    def pull(self) -> tuple[int, np.ndarray]:
        return self.shards[0].version, self.layout.merge([s.flat().read() for s in self.shards])


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
        from streamlearn.model import build_model

        full = build_model(model)
        shapes, rows = full.shapes, full.row_params()
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
        import ray

        parts = self.rows.cut(rows)
        results = ray.get([s.pull_rows.remote(r) for s, r in zip(self.shards, parts, strict=True)])
        return results[0][0], self.rows.merge([r[1] for r in results], [len(r) for r in parts])

    def pull(self) -> tuple[int, np.ndarray]:
        import ray

        results = ray.get([s.pull.remote() for s in self.shards])
        return results[0][0], self.layout.merge([r[1] for r in results])


class _Pending:
    """The shards' replies to one push, fetched (and joined by ``finish``) when the worker settles it."""

    def __init__(self, refs: list[Any], finish: Callable[[list[Any]], tuple[PushResult, Any]]) -> None:
        self.refs, self.finish = refs, finish

    def result(self) -> tuple[PushResult, Any]:
        import ray

        return self.finish(ray.get(self.refs))

    def done(self) -> bool:
        import ray

        ready, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=0, fetch_local=False)
        return len(ready) == len(self.refs)
