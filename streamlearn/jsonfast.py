"""The fast path for JSON records: typed decoding and validation in C.

:class:`FastJson` (one per schema; :func:`accept` for a single record)
decodes one JSON-contract record with msgspec into a typed
struct whose types carry the contract's constraints, checked while parsing: no
bool where a number belongs, no NaN/Infinity literals, a non-empty string id,
the dense width, features within float32 range, probabilities >= 0, 0 < weight <= float32's largest.
Python then checks only what a type cannot say (class range, correct xor
label). It returns the event, or None for anything it does not accept; the
caller then runs :func:`streamlearn.codec.reference_json`, which names the
reason. So the reference decides every rejection, and the fast path only has to
never accept what the reference rejects; a differential fuzz test checks that,
and that the events both accept are equal.

Measured with ``python benchmarks/decode_speed.py`` (digits, 64 features).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import UNSET, UnsetType

from streamlearn.events import F32_MAX, MAX_AHEAD_SECONDS, Event, Features, Feedback, Prediction, Schema

Feature = Annotated[float, msgspec.Meta(ge=-F32_MAX, le=F32_MAX)]  # beyond: the reference decides
Sparse = dict[str, Feature]
Id = Annotated[str, msgspec.Meta(min_length=1)]
Prob = Annotated[float, msgspec.Meta(ge=0.0)]
Weight = Annotated[float, msgspec.Meta(gt=0.0, le=F32_MAX)]
Class = int | str


@functools.lru_cache(maxsize=8)
def _decoders(n_features: int, n_classes: int) -> dict[str, msgspec.json.Decoder[Any]]:
    """Typed decoders for one schema: the dense width and the probs length are part of the type."""
    dense = Annotated[list[Feature], msgspec.Meta(min_length=n_features, max_length=n_features)]
    probs = Annotated[list[Prob], msgspec.Meta(min_length=n_classes, max_length=n_classes)]

    prediction = msgspec.defstruct("FastPrediction", [
        ("id", Id), ("ts", float), ("features", dense | Sparse), ("prediction", Class),
        ("model_version", int | None, None), ("probs", probs | None, None),
    ])
    feedback = msgspec.defstruct("FastFeedback", [
        ("id", Id), ("ts", float), ("correct", bool | UnsetType, UNSET), ("label", Class | UnsetType, UNSET),
        ("weight", Weight, 1.0), ("features", dense | Sparse | None, None),
        ("prediction", Class | UnsetType, UNSET),
    ])
    return {"prediction": msgspec.json.Decoder(prediction), "feedback": msgspec.json.Decoder(feedback)}


class FastJson:
    """The fast path bound to one schema: :meth:`prediction` and :meth:`feedback` run once per record."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.n_classes = schema.n_classes
        decoders = _decoders(schema.n_features, schema.n_classes)
        self._pred, self._fb = decoders["prediction"].decode, decoders["feedback"].decode

    def accept(self, raw: bytes, kind: str) -> Event | None:
        return self.prediction(raw) if kind == "prediction" else self.feedback(raw)

    def _index(self, value: int | str) -> int | None:
        if type(value) is int:  # the common case, without the schema's name lookup
            return value if 0 <= value < self.n_classes else None
        return self.schema.class_index(value)

    def prediction(self, raw: bytes) -> Prediction | None:
        try:
            obj = self._pred(raw)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None
        pred = self._index(obj.prediction)
        if pred is None or not _ts_ok(obj.ts):
            return None
        probs = None if obj.probs is None else np.asarray(obj.probs, dtype=np.float64)
        if type(obj.features) is dict and not self.schema.named_features:
            return None  # the reference decoder checks the names against the dense width
        return Prediction(obj.id, obj.ts, _features(obj.features), pred, obj.model_version, probs)

    def feedback(self, raw: bytes) -> Feedback | None:
        try:
            obj = self._fb(raw)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None
        if not _ts_ok(obj.ts):
            return None
        has_correct = obj.correct is not UNSET
        if has_correct == (obj.label is not UNSET):
            return None
        label = None if obj.label is UNSET else self._index(obj.label)
        if label is None and not has_correct:
            return None
        if type(obj.features) is dict and not self.schema.named_features:
            return None  # the reference decoder checks the names against the dense width
        prediction = None
        if obj.prediction is not UNSET:
            prediction = self._index(obj.prediction)
            if prediction is None or not has_correct:
                return None
        return Feedback(
            obj.id, obj.ts,
            correct=obj.correct if has_correct else None,
            label=label,
            weight=obj.weight,
            features=None if obj.features is None else _features(obj.features),
            prediction=prediction,
        )


@functools.lru_cache(maxsize=8)
def fast_json(schema: Schema) -> FastJson:
    return FastJson(schema)


def accept(raw: bytes, kind: str, schema: Schema) -> Event | None:
    """The event in ``raw`` if the fast path accepts it, else None (ask the reference decoder)."""
    return fast_json(schema).accept(raw, kind)


def _ts_ok(ts: float) -> bool:
    """Finite and not past the consumer's clock by more than MAX_AHEAD_SECONDS (the reference names why)."""
    return math.isfinite(ts) and ts <= time.time() + MAX_AHEAD_SECONDS


def _features(value: list[float] | dict[str, float]) -> Features:
    return np.asarray(value, dtype=np.float32) if isinstance(value, list) else value
