"""What one push carries and what its reply says, on the wire and combined over shards.

Ray serialises each argument of a call on its own, and a bytes argument for
next to nothing; a push is on the workers' hot path, so an update and its
reply each travel as one bytes object: a fixed little-endian header, then the
float64 update (a :class:`~streamlearn.ps.state.FlatState` or
:class:`~streamlearn.ps.state.RowState` change) or the float32 state.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np


@dataclass
class PushResult:
    applied: int = 0  # gradients applied
    dropped: int = 0  # bounded mode: too stale, not applied
    downweighted: int = 0
    staleness: list[int] = field(default_factory=list)  # per gradient, versions behind
    kept: list[bool] = field(default_factory=list)  # per gradient, applied (not dropped as stale)
    version: int = 0  # the shard's version after the push
    lr: float | None = None  # the servers' learning rate (the guard may lower it): workers step with it
    clip_norm: float | None = None  # the guard's gradient clip while diverging: workers clip with it
    held: float = 0.0  # seconds the server held the push before replying (sync mode: the wait for the round)


def combine(results: Sequence[PushResult]) -> PushResult:
    """One push's result from its shards' (shard 0's version, learning rate and clip). A gradient counts as
    kept only if every shard kept it: in bounded mode each shard judges staleness by its own version, and
    pushes of two workers can reach two shards in opposite orders, so near the bound one shard may drop what
    another applied; its examples are then not credited (the model holds part of it: counted as dropped)."""
    first = results[0]
    if len(results) == 1:
        return first  # (the worker waits for the slowest shard: its hold is the push's)
    kept = [all(k) for k in zip(*(r.kept for r in results), strict=True)]
    return replace(first, kept=kept, dropped=kept.count(False), applied=kept.count(True),
                   downweighted=max(r.downweighted for r in results), held=max(r.held for r in results))


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
