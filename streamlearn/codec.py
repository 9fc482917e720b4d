"""Bytes <-> events: the JSON contract (v1) and a compact binary codec.

JSON (one event per Kafka record, UTF-8, key = prediction id)::

    prediction: {"id": "req-42", "ts": 1764300000.5, "model_version": 3,
                 "features": [0.1, 0.0, ...] | {"name": 1.0, ...},
                 "prediction": 4 | "cat", "probs": [...]}
    feedback:   {"id": "req-42", "ts": 1764300050.0, "correct": false}
                {"id": "req-42", "ts": 1764300050.0, "label": 7, "weight": 2.0}
                (optionally with inline "features", and "prediction" beside "correct")

Unknown keys are ignored, so producers may add fields. ``ts`` may be at most
:data:`MAX_AHEAD_SECONDS` ahead of the consumer's clock: the join's watermark is
the newest event time seen, so one event stamped in milliseconds instead of
seconds would otherwise expire everything after it. ``weight`` must fit float32.

Binary (several events per record, little endian)::

    record     := b"SLB1" u32:count event*count
    event      := u8:kind(1 prediction, 2 feedback) u16:id_len id:utf8 f64:ts body
    prediction := i32:prediction i64:model_version(-1 = none) features u16:n_probs f32*n_probs
    feedback   := u8:flags i32:label_or_prediction f32:weight [features if flags&8]
                  flags: 1 has correct, 2 correct value, 4 has label, 8 has features, 16 has prediction
    features   := u8:0 u32:n f32*n                          (dense)
                | u8:1 u32:n (u16:name_len name:utf8 f32)*n  (sparse)

A record that starts with the magic is binary, anything else is JSON, so one
topic may carry both. Every malformed input raises :class:`DecodeError` and
nothing else; the reason is short, stable text suitable for a DLQ header.
:func:`reference_json` is the JSON contract checked field by field; valid
records take the typed fast path in :mod:`streamlearn.jsonfast` first.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np

from streamlearn import jsonfast
from streamlearn.events import F32_MAX, MAX_AHEAD_SECONDS, Event, Features, Feedback, Prediction, Schema

Kind = Literal["prediction", "feedback"]
MAGIC = b"SLB1"


class DecodeError(ValueError):
    """A record that cannot become an event. ``reason`` is a short stable code."""

    retriable = False

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# ---------------------------------------------------------------------------
# decoding


def decode(raw: bytes, kind: Kind, schema: Schema) -> list[Event]:
    """Decode one Kafka record (JSON or binary) into its events."""
    return record_decoder(schema)(raw, kind)


class RecordDecoder:
    """Decodes records of one schema; an :class:`~streamlearn.ingest.Ingest` keeps one (it runs per record)."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.limit = schema.max_message_bytes
        self.fast = jsonfast.fast_json(schema)

    def __call__(self, raw: bytes, kind: Kind) -> list[Event]:
        try:
            if len(raw) > self.limit:
                raise DecodeError("oversize", f"{len(raw)} bytes > {self.limit}")
            if raw.startswith(MAGIC):
                return _decode_binary(raw, kind, self.schema)
            fast = self.fast.prediction(raw) if kind == "prediction" else self.fast.feedback(raw)
            return [fast if fast is not None else reference_json(raw, kind, self.schema)]
        except DecodeError:
            raise
        except Exception as exc:  # a codec bug must still not stop a partition
            raise DecodeError("malformed", f"{type(exc).__name__}: {exc}") from exc


@functools.lru_cache(maxsize=8)
def record_decoder(schema: Schema) -> RecordDecoder:
    return RecordDecoder(schema)


def _reject_constant(name: str) -> float:
    raise DecodeError("non_finite", f"{name} is not a number")


def reference_json(raw: bytes, kind: Kind, schema: Schema) -> Event:
    """The JSON contract, checked field by field: decides every rejection and names its reason."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("not_utf8", str(exc)) from exc
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except DecodeError:
        raise
    except (ValueError, RecursionError) as exc:
        raise DecodeError("not_json", str(exc)[:200]) from exc
    if not isinstance(obj, dict):
        raise DecodeError("not_object", f"top level is {type(obj).__name__}")
    if kind == "prediction":
        return prediction_from_dict(obj, schema)
    return feedback_from_dict(obj, schema)


def prediction_from_dict(obj: Mapping[str, Any], schema: Schema) -> Prediction:
    version = obj.get("model_version")
    if version is not None and (type(version) is not int):
        raise DecodeError("bad_model_version", "model_version must be an integer")
    if "prediction" not in obj:
        raise DecodeError("missing_prediction", "prediction event needs 'prediction'")
    return Prediction(
        id=_id(obj),
        ts=_ts(obj),
        features=features_from(obj.get("features"), schema, required=True),  # type: ignore[arg-type]
        prediction=_class(obj["prediction"], schema, "prediction"),
        model_version=version,
        probs=_probs(obj.get("probs"), schema),
    )


def feedback_from_dict(obj: Mapping[str, Any], schema: Schema) -> Feedback:
    has_correct, has_label = "correct" in obj, "label" in obj
    if has_correct == has_label:
        raise DecodeError("correct_xor_label", "feedback needs exactly one of 'correct' and 'label'")
    correct = obj.get("correct")
    if has_correct and type(correct) is not bool:
        raise DecodeError("bad_correct", "'correct' must be true or false")
    label = _class(obj["label"], schema, "label") if has_label else None
    weight = obj.get("weight", 1.0)
    if type(weight) not in (int, float) or not 0 < _float(weight) <= F32_MAX:
        raise DecodeError("bad_weight", "'weight' must be a number > 0 that float32 holds")
    prediction = None
    if "prediction" in obj:
        if not has_correct:
            raise DecodeError("prediction_without_correct", "inline 'prediction' goes with 'correct'")
        prediction = _class(obj["prediction"], schema, "prediction")
    return Feedback(
        id=_id(obj),
        ts=_ts(obj),
        correct=correct if has_correct else None,
        label=label,
        weight=float(weight),
        features=features_from(obj.get("features"), schema, required=False),
        prediction=prediction,
    )


def _id(obj: Mapping[str, Any]) -> str:
    value = obj.get("id")
    if value is None:
        raise DecodeError("missing_id", "'id' is required")
    if not isinstance(value, str):
        raise DecodeError("bad_id", "'id' must be a string")
    if not value:
        raise DecodeError("empty_id", "'id' must not be empty")
    return value


def _ts(obj: Mapping[str, Any]) -> float:
    if "ts" not in obj:
        raise DecodeError("missing_ts", "'ts' (event time, seconds) is required")
    value = obj["ts"]
    if type(value) not in (int, float):
        raise DecodeError("bad_ts", "'ts' must be a number")
    return _checked_ts(_float(value))


def _checked_ts(ts: float) -> float:
    if not math.isfinite(ts):
        raise DecodeError("non_finite", "'ts' is not finite")
    if ts > time.time() + MAX_AHEAD_SECONDS:
        raise DecodeError("ts_in_future", f"'ts' {ts:.0f} is more than {MAX_AHEAD_SECONDS:.0f} s ahead of this "
                                          "consumer's clock (milliseconds instead of seconds?)")
    return ts


def _float(value: float) -> float:
    """A JSON number as a float; an integer too large for one becomes infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _class(value: object, schema: Schema, name: str) -> int:
    index = schema.class_index(value)
    if index is None:
        if type(value) not in (int, str):
            raise DecodeError(f"bad_{name}", f"'{name}' must be a class index or name")
        raise DecodeError("unknown_class", f"'{name}' {value!r} is not one of the {schema.n_classes} classes")
    return index


def features_from(value: object, schema: Schema, required: bool) -> Features | None:
    """Validate a JSON ``features`` value (dense list or sparse object) against the schema."""
    if value is None:
        if required:
            raise DecodeError("missing_features", "'features' is required")
        return None
    if isinstance(value, list):
        if len(value) != schema.n_features:
            raise DecodeError("bad_dense_length", f"{len(value)} features, expected {schema.n_features}")
        for v in value:
            if type(v) is not float and type(v) is not int:
                raise DecodeError("bad_feature", "dense features must be numbers")
        with np.errstate(over="ignore"):
            arr = np.asarray([_float(v) for v in value], dtype=np.float32)
        if not np.isfinite(arr).all():
            raise DecodeError("non_finite", "a feature is NaN or infinite (or overflows float32)")
        return arr
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for k, v in value.items():
            if type(v) is not float and type(v) is not int:
                raise DecodeError("bad_feature", f"sparse feature {k[:50]!r} must be a number")
            v = _float(v)
            if not math.isfinite(v) or abs(v) > F32_MAX:
                raise DecodeError("non_finite", f"sparse feature {k[:50]!r} is not finite")
            out[k] = float(v)
        return _positional(out, schema)
    raise DecodeError("bad_features", "'features' must be a list (dense) or an object (sparse)")


def _positional(features: dict[str, float], schema: Schema) -> dict[str, float]:
    """``features`` as is when the model takes names; for a dense model, only names that are positions, so
    that no feature is silently dropped and no example trains on an empty vector."""
    if schema.named_features:
        return features
    n = schema.n_features
    if not features:
        raise DecodeError("empty_features", f"no features: a dense model needs a list of {n} numbers")
    for name in features:
        if not (name.isascii() and name.isdigit() and int(name) < n):
            raise DecodeError("named_features", f"feature {name[:50]!r} is not a position 0..{n - 1}: a dense "
                              f"model (--model linear or mlp) takes a list of {n} numbers; named features "
                              "need --model hashed")
    return features


def _probs(value: object, schema: Schema) -> np.ndarray | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != schema.n_classes:
        raise DecodeError("bad_probs", f"'probs' must be a list of {schema.n_classes} numbers")
    for v in value:
        if type(v) is not float and type(v) is not int:
            raise DecodeError("bad_probs", "'probs' must hold numbers")
    return _checked_probs(np.asarray([_float(v) for v in value], dtype=np.float64))


def _checked_probs(arr: np.ndarray) -> np.ndarray:
    if not (arr.min() >= 0 and arr.max() < math.inf):  # a NaN fails the first comparison
        raise DecodeError("bad_probs", "'probs' must be finite and >= 0")
    return arr


# binary --------------------------------------------------------------------

_HEAD = struct.Struct("<4sI")
_EVENT = struct.Struct("<BH")
_TS = struct.Struct("<d")
_PRED = struct.Struct("<iq")
_FB = struct.Struct("<Bif")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_U8 = struct.Struct("<B")
_F32 = struct.Struct("<f")
_I32 = struct.Struct("<i")


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos

    def take(self, st: struct.Struct) -> tuple[Any, ...]:
        if self.pos + st.size > len(self.buf):
            raise DecodeError("truncated", f"record ends at byte {len(self.buf)}")
        out = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return out

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise DecodeError("truncated", f"record ends at byte {len(self.buf)}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def floats(self, n: int, dtype: type = np.float32) -> np.ndarray:
        """n little-endian float32s, as a new (writable) array of ``dtype``."""
        return np.frombuffer(self.raw(4 * n), dtype="<f4").astype(dtype)

    def text(self) -> str:
        (n,) = self.take(_U16)
        try:
            return self.raw(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("not_utf8", str(exc)) from exc


def _decode_binary(raw: bytes, kind: Kind, schema: Schema) -> list[Event]:
    r = _Reader(raw, 0)
    _, count = r.take(_HEAD)
    events: list[Event] = []
    want = 1 if kind == "prediction" else 2
    for _ in range(count):
        (k,) = r.take(_U8)
        if k != want:
            raise DecodeError("wrong_kind", f"a {kind} topic record holds event kind {k}")
        ident = r.text()
        if not ident:
            raise DecodeError("empty_id", "'id' must not be empty")
        (ts,) = r.take(_TS)
        _checked_ts(ts)
        if k == 1:
            pred, version = r.take(_PRED)
            features = _bin_features(r, schema)
            (n_probs,) = r.take(_U16)
            probs = _bin_probs(r, n_probs, schema) if n_probs else None
            events.append(
                Prediction(ident, ts, features, _class(pred, schema, "prediction"),
                           None if version < 0 else version, probs)
            )
        else:
            flags, value, weight = r.take(_FB)
            if bool(flags & 1) == bool(flags & 4):
                raise DecodeError("correct_xor_label", "feedback needs exactly one of correct and label")
            if not math.isfinite(weight) or weight <= 0:
                raise DecodeError("bad_weight", "'weight' must be a finite number > 0")
            feats = _bin_features(r, schema) if flags & 8 else None
            has_label = bool(flags & 4)
            events.append(
                Feedback(
                    ident, ts,
                    correct=bool(flags & 2) if flags & 1 else None,
                    label=_class(value, schema, "label") if has_label else None,
                    weight=float(weight),
                    features=feats,
                    prediction=_class(value, schema, "prediction") if flags & 16 else None,
                )
            )
    if r.pos != len(raw):
        raise DecodeError("trailing_bytes", f"{len(raw) - r.pos} bytes after the last event")
    return events


def _bin_probs(r: _Reader, n: int, schema: Schema) -> np.ndarray:
    """What :func:`_probs` checks, read from binary: the class count, finite, >= 0."""
    if n != schema.n_classes:
        raise DecodeError("bad_probs", f"'probs' must be a list of {schema.n_classes} numbers")
    return _checked_probs(r.floats(n, np.float64))


def _bin_features(r: _Reader, schema: Schema) -> Features:
    (tag,) = r.take(_U8)
    (n,) = r.take(_U32)
    if tag == 0:
        if n != schema.n_features:
            raise DecodeError("bad_dense_length", f"{n} features, expected {schema.n_features}")
        arr = r.floats(n)
        if not np.isfinite(arr).all():
            raise DecodeError("non_finite", "a feature is NaN or infinite")
        return arr
    if tag == 1:  # the reader's steps inlined: three calls per feature were most of a sparse event's decoding
        buf, pos, end = r.buf, r.pos, len(r.buf)
        out: dict[str, float] = {}
        for _ in range(n):
            if pos + 2 > end:
                raise DecodeError("truncated", f"record ends at byte {end}")
            (size,) = _U16.unpack_from(buf, pos)
            if pos + 2 + size + 4 > end:
                raise DecodeError("truncated", f"record ends at byte {end}")
            try:
                name = buf[pos + 2 : pos + 2 + size].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError("not_utf8", str(exc)) from exc
            (v,) = _F32.unpack_from(buf, pos + 2 + size)
            pos += 2 + size + 4
            if not math.isfinite(v):
                raise DecodeError("non_finite", f"sparse feature {name[:50]!r} is not finite")
            out[name] = v
        r.pos = pos
        return _positional(out, schema)
    raise DecodeError("bad_features", f"unknown features tag {tag}")


# ---------------------------------------------------------------------------
# encoding


def _features_json(features: Features) -> list[float] | dict[str, float]:
    if isinstance(features, np.ndarray):
        return [float(v) for v in features.tolist()]
    return dict(features)


def to_dict(event: Event) -> dict[str, Any]:
    """The JSON-contract object for an event."""
    if isinstance(event, Prediction):
        out: dict[str, Any] = {"id": event.id, "ts": event.ts, "features": _features_json(event.features),
                               "prediction": event.prediction}
        if event.model_version is not None:
            out["model_version"] = event.model_version
        if event.probs is not None:
            out["probs"] = [round(float(p), 6) for p in event.probs]
        return out
    out = {"id": event.id, "ts": event.ts}
    if event.label is not None:
        out["label"] = event.label
    else:
        out["correct"] = event.correct
    if event.weight != 1.0:
        out["weight"] = event.weight
    if event.features is not None:
        out["features"] = _features_json(event.features)
    if event.prediction is not None:
        out["prediction"] = event.prediction
    return out


def encode_json(event: Event) -> bytes:
    return json.dumps(to_dict(event), separators=(",", ":")).encode("utf-8")


def encode_binary(events: Iterable[Event]) -> bytes:
    """Pack events of one kind into one binary record."""
    parts: list[bytes] = []
    count = 0
    for ev in events:
        count += 1
        ident = ev.id.encode("utf-8")
        head = _EVENT.pack(1 if isinstance(ev, Prediction) else 2, len(ident)) + ident + _TS.pack(ev.ts)
        parts.append(head)
        if isinstance(ev, Prediction):
            parts.append(_PRED.pack(ev.prediction, -1 if ev.model_version is None else ev.model_version))
            parts.append(_bin_features_bytes(ev.features))
            probs = ev.probs if ev.probs is not None else np.zeros(0)
            parts.append(_U16.pack(len(probs)) + np.asarray(probs, dtype="<f4").tobytes())
        else:
            flags = (1 if ev.correct is not None else 0) | (2 if ev.correct else 0)
            flags |= 4 if ev.label is not None else 0
            flags |= 8 if ev.features is not None else 0
            flags |= 16 if ev.prediction is not None else 0
            value = ev.label if ev.label is not None else (ev.prediction or 0)
            parts.append(_FB.pack(flags, value, ev.weight))
            if ev.features is not None:
                parts.append(_bin_features_bytes(ev.features))
    return _HEAD.pack(MAGIC, count) + b"".join(parts)


def _bin_features_bytes(features: Features) -> bytes:
    if isinstance(features, np.ndarray):
        return b"\x00" + _U32.pack(len(features)) + np.asarray(features, dtype="<f4").tobytes()
    parts = [b"\x01" + _U32.pack(len(features))]
    for name, v in features.items():
        b = name.encode("utf-8")
        parts.append(_U16.pack(len(b)) + b + _F32.pack(v))
    return b"".join(parts)


CODECS = ("json", "binary")
