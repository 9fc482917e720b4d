"""Atomic checkpoints: the model, its optimizer, its version, and the stream position it includes.

A checkpoint is one file holding, consistently: every parameter-server
shard's state (weights, optimizer state, version), and every worker's
progress (next offset per topic-partition, the joiners' pending state, the
examples not yet learned, and the lineage counts of examples applied per
partition and polarity). Restoring it and seeking to its offsets gives every
event's update exactly once in the model that survives.

File format 2: ``SLCK2\\n`` + sha256 of the payload (32 bytes) + the payload
(a pickled dict of plain numbers, numpy arrays and events). Written to a temp
file, fsynced, then renamed, so a crash leaves either the old set or the new
file, never half of one. A file whose digest does not match is reported and
skipped. Format 1 (``SLCK1\\n``, a ``torch.save`` payload with torch tensors
and torch optimizer state) still loads: reading one imports torch and turns
its shards into format 2's (:func:`_upgraded_shard`).

Events in the join state and the buffer are pickled as they are. Files
written while events were dataclasses (before they became msgspec structs)
still load: :class:`_Unpickler` reads their events as placeholders, which
:func:`_upgraded` turns into today's structs.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import time
import types
from pathlib import Path
from typing import Any

import msgspec

from streamlearn import events
from streamlearn.config.runtime import CheckpointConfig as CheckpointConfig

log = logging.getLogger(__name__)
FORMAT = 2
MAGIC = b"SLCK2\n"
MAGIC_V1 = b"SLCK1\n"  # torch-saved; read, never written
PATTERN = "checkpoint-*.slck"


class CorruptCheckpoint(Exception):
    pass


def save(directory: str | Path, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` atomically as the newest checkpoint; prune to the newest ``keep``.

    Names carry a nanosecond stamp that only grows within a directory: the clock's, or one past the newest
    file's if the clock stepped back (a checkpoint stamped earlier would sort as old and be pruned at once).
    Temp files a crashed write left behind are removed (one job writes a directory: its driver).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.glob(f".{PATTERN}.tmp"):
        stale.unlink(missing_ok=True)
    payload = pickle.dumps({**state, "saved_at": time.time()}, protocol=pickle.HIGHEST_PROTOCOL)
    stamps = [int(p.stem.removeprefix("checkpoint-")) for p in d.glob(PATTERN)
              if p.stem.removeprefix("checkpoint-").isdigit()]
    name = f"checkpoint-{max([time.time_ns(), *(s + 1 for s in stamps)]):020d}.slck"
    tmp = d / f".{name}.tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + hashlib.sha256(payload).digest() + payload)
        f.flush()
        os.fsync(f.fileno())
    final = d / name
    os.replace(tmp, final)
    dir_fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for old in sorted(d.glob(PATTERN))[:-keep]:
        old.unlink(missing_ok=True)
    return final


def read(path: str | Path) -> dict[str, Any]:
    raw = Path(path).read_bytes()
    magic = raw[: len(MAGIC)]
    if magic not in (MAGIC, MAGIC_V1) or len(raw) < len(MAGIC) + 32:
        raise CorruptCheckpoint(f"{path}: not a streamlearn checkpoint (bad header)")
    digest, payload = raw[len(MAGIC) : len(MAGIC) + 32], raw[len(MAGIC) + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptCheckpoint(f"{path}: checksum mismatch (partial or corrupt file)")
    before = _LegacyEvent.placeholders
    try:
        if magic == MAGIC:
            state: dict[str, Any] = _Unpickler(io.BytesIO(payload)).load()
        else:
            state = _read_v1(payload)
    except Exception as exc:
        raise CorruptCheckpoint(f"{path}: unreadable payload: {exc}") from exc
    return _upgraded(state) if _LegacyEvent.placeholders > before else state


def _read_v1(payload: bytes) -> dict[str, Any]:
    """A format-1 payload (``torch.save``), its shards in format 2's plain arrays."""
    import torch  # only old files need it

    state: dict[str, Any] = torch.load(io.BytesIO(payload), weights_only=False, pickle_module=_PICKLE)
    if "shards" in state:
        state["shards"] = [_upgraded_shard(s) for s in state["shards"]]
    state["format"] = FORMAT
    return state


def _upgraded_shard(shard: dict[str, Any]) -> dict[str, Any]:
    """A format-1 shard (torch parameters and a torch SGD/Adagrad ``state_dict``) as a format-2 one."""
    params = [p.detach().numpy().copy() for p in shard["params"]]
    optimizer = shard["optimizer"]
    per_param = optimizer["state"]  # index -> {"step", "sum"} (Adagrad); empty for SGD
    sums = [per_param[i]["sum"].numpy().copy() for i in range(len(params)) if "sum" in per_param.get(i, {})]
    steps = max((int(float(s["step"])) for s in per_param.values() if "step" in s), default=0)
    return {"index": shard["index"], "params": params, "sums": sums if len(sums) == len(params) else [],
            "steps": steps, "lr": float(optimizer["param_groups"][0]["lr"]), "version": shard["version"]}


def latest(directory: str | Path | None) -> tuple[Path, dict[str, Any]] | None:
    """The newest valid checkpoint, skipping (and logging) corrupt ones; None if there is none."""
    if directory is None or not Path(directory).is_dir():
        return None
    for path in sorted(Path(directory).glob(PATTERN), reverse=True):
        try:
            return path, read(path)
        except (CorruptCheckpoint, OSError) as exc:
            log.warning("skipping checkpoint: %s", exc)
    return None


class _LegacyEvent:
    """An event pickled as a dataclass: ``cls(*fields)`` (a struct's pickle) builds today's event, while
    ``cls()`` plus a field dict (a dataclass's) leaves a placeholder for :func:`_upgraded`."""

    event: type[msgspec.Struct]
    placeholders = 0  # made so far: a read that made none need not walk its state

    def __new__(cls, *args: Any) -> Any:
        if args:
            return cls.event(*args)
        _LegacyEvent.placeholders += 1
        return object.__new__(cls)


_LEGACY = {name: type(name, (_LegacyEvent,), {"event": getattr(events, name)})
           for name in ("Prediction", "Feedback", "Example")}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "streamlearn.events" and name in _LEGACY:
            return _LEGACY[name]
        return super().find_class(module, name)


_PICKLE = types.SimpleNamespace(**{k: getattr(pickle, k) for k in ("load", "loads", "UnpicklingError")},
                                Unpickler=_Unpickler, __name__="streamlearn.checkpoint.pickle")


def _upgraded(value: Any) -> Any:
    """``value`` with every placeholder of a dataclass-pickled event replaced by the event."""
    if isinstance(value, _LegacyEvent):
        return value.event(**vars(value))
    if isinstance(value, dict):
        return {k: _upgraded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_upgraded(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_upgraded(v) for v in value)
    return value
