"""Atomic checkpoints: the model, its optimizer, its version, and the stream position it includes.

A checkpoint is one file holding, consistently: every parameter-server
shard's state (weights, optimizer state, version), and every worker's
progress (next offset per topic-partition, the joiners' pending state, the
examples not yet learned, and the lineage counts of examples applied per
partition and polarity). Restoring it and seeking to its offsets gives every
event's update exactly once in the model that survives.

File format: ``SLCK1\\n`` + sha256 of the payload (32 bytes) + the payload
(``torch.save`` of a dict). Written to a temp file, fsynced, then renamed, so
a crash leaves either the old set or the new file, never half of one. A file
whose digest does not match is reported and skipped.

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
import torch

from streamlearn import events
from streamlearn.config.runtime import CheckpointConfig as CheckpointConfig

log = logging.getLogger(__name__)
MAGIC = b"SLCK1\n"
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
    buf = io.BytesIO()
    torch.save({**state, "saved_at": time.time()}, buf)
    payload = buf.getvalue()
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
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 32:
        raise CorruptCheckpoint(f"{path}: not a streamlearn checkpoint (bad header)")
    digest, payload = raw[len(MAGIC) : len(MAGIC) + 32], raw[len(MAGIC) + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptCheckpoint(f"{path}: checksum mismatch (partial or corrupt file)")
    before = _LegacyEvent.placeholders
    try:
        state: dict[str, Any] = torch.load(io.BytesIO(payload), weights_only=False, pickle_module=_PICKLE)
    except Exception as exc:
        raise CorruptCheckpoint(f"{path}: unreadable payload: {exc}") from exc
    return _upgraded(state) if _LegacyEvent.placeholders > before else state


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
