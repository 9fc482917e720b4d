"""The event contract: every malformed input is a DecodeError, valid ones round-trip."""

import json
import random

import numpy as np
import pytest

from streamlearn.codec import DecodeError, decode, encode_binary, encode_json
from streamlearn.events import Feedback, Prediction, Schema

SCHEMA = Schema.from_spec("cat,dog,bird", n_features=3)


def pred(**kw) -> bytes:
    obj = {"id": "req-42", "ts": 1764300000.5, "model_version": 3, "features": [0.1, 0.0, 2], "prediction": 1}
    obj.update(kw)
    return json.dumps(obj).encode()


def test_prediction_contract_example() -> None:
    (ev,) = decode(pred(probs=[0.2, 0.7, 0.1]), "prediction", SCHEMA)
    assert isinstance(ev, Prediction)
    assert ev.id == "req-42" and ev.prediction == 1 and ev.model_version == 3
    assert ev.features.tolist() == pytest.approx([0.1, 0.0, 2.0])
    assert ev.probs is not None and ev.probs.tolist() == pytest.approx([0.2, 0.7, 0.1])


def test_class_names_and_sparse_features() -> None:
    (ev,) = decode(pred(prediction="bird", features={"colour=red": 1, "len": 2.5}), "prediction", SCHEMA)
    assert ev.prediction == 2 and ev.features == {"colour=red": 1.0, "len": 2.5}


def test_feedback_forms() -> None:
    (wrong,) = decode(b'{"id": "a", "ts": 1, "correct": false}', "feedback", SCHEMA)
    assert isinstance(wrong, Feedback) and wrong.correct is False and wrong.label is None
    (label,) = decode(b'{"id": "a", "ts": 1, "label": "dog", "weight": 2}', "feedback", SCHEMA)
    assert label.label == 1 and label.weight == 2.0 and label.correct is None
    (inline,) = decode(b'{"id": "a", "ts": 1, "correct": true, "prediction": 2, "features": [1, 2, 3]}',
                       "feedback", SCHEMA)
    assert inline.prediction == 2 and inline.features is not None


@pytest.mark.parametrize(
    ("raw", "kind", "reason"),
    [
        (b"\xff\xfe", "prediction", "not_utf8"),
        (b"{not json", "prediction", "not_json"),
        (b"[1, 2]", "prediction", "not_object"),
        (pred(id=None), "prediction", "missing_id"),
        (pred(id=""), "prediction", "empty_id"),
        (pred(id=7), "prediction", "bad_id"),
        (pred(ts="now"), "prediction", "bad_ts"),
        (pred(features=[1, 2]), "prediction", "bad_dense_length"),
        (pred(features=[1, "x", 2]), "prediction", "bad_feature"),
        (pred(features=[1, True, 2]), "prediction", "bad_feature"),
        (pred(features="abc"), "prediction", "bad_features"),
        (pred(features=[1, 2, 1e39]), "prediction", "non_finite"),
        (b'{"id": "a", "ts": 1, "features": [NaN, 1, 2], "prediction": 0}', "prediction", "non_finite"),
        (b'{"id": "a", "ts": Infinity, "features": [0, 1, 2], "prediction": 0}', "prediction", "non_finite"),
        (pred(prediction=3), "prediction", "unknown_class"),
        (pred(prediction="fish"), "prediction", "unknown_class"),
        (pred(prediction=1.5), "prediction", "bad_prediction"),
        (pred(probs=[0.5, 0.5]), "prediction", "bad_probs"),
        (pred(model_version="v3"), "prediction", "bad_model_version"),
        (b'{"id": "a", "ts": 1}', "feedback", "correct_xor_label"),
        (b'{"id": "a", "ts": 1, "correct": true, "label": 1}', "feedback", "correct_xor_label"),
        (b'{"id": "a", "ts": 1, "correct": "yes"}', "feedback", "bad_correct"),
        (b'{"id": "a", "ts": 1, "label": 9}', "feedback", "unknown_class"),
        (b'{"id": "a", "ts": 1, "label": 1, "weight": -1}', "feedback", "bad_weight"),
        (b'{"id": "a", "ts": 1, "label": 1, "weight": 1e39}', "feedback", "bad_weight"),  # inf in float32
        (pred(ts=1764300000500), "prediction", "ts_in_future"),  # milliseconds
        (b'{"id": "a", "ts": 1764300000500, "correct": true}', "feedback", "ts_in_future"),
        (b"{" + b'"id": "' + b"a" * (1 << 20) + b'"}', "feedback", "oversize"),
        (b"SLB1\x05\x00\x00\x00", "prediction", "truncated"),
    ],
)
def test_rejects_malformed(raw: bytes, kind: str, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode(raw, kind, SCHEMA)  # type: ignore[arg-type]
    assert err.value.reason == reason


def test_binary_round_trip_packs_several_events() -> None:
    events = [
        Prediction("p1", 1.0, np.array([1, 2, 3], np.float32), 2, 7, np.array([0.1, 0.2, 0.7])),
        Prediction("p2", 2.0, {"a": 1.0}, 0),
    ]
    out = decode(encode_binary(events), "prediction", SCHEMA)
    assert [e.id for e in out] == ["p1", "p2"]
    assert out[0].model_version == 7 and out[1].model_version is None and out[1].probs is None
    assert out[0].probs.tolist() == pytest.approx([0.1, 0.2, 0.7], rel=1e-6)
    fbs = [Feedback("p1", 3.0, correct=False), Feedback("p2", 4.0, label=1, weight=0.5),
           Feedback("p3", 5.0, correct=True, features=np.zeros(3, np.float32), prediction=2)]
    back = decode(encode_binary(fbs), "feedback", SCHEMA)
    assert back == [*fbs[:2], back[2]]
    assert back[2].prediction == 2 and back[2].correct is True
    with pytest.raises(DecodeError, match="wrong_kind"):
        decode(encode_binary(fbs), "prediction", SCHEMA)


def test_json_round_trip() -> None:
    ev = Feedback("x", 9.5, label=2, weight=3.0, features={"f": 1.0})
    assert decode(encode_json(ev), "feedback", SCHEMA) == [ev]


def _random_json(rng: random.Random, depth: int = 0):
    choice = rng.randrange(8 if depth < 3 else 5)
    if choice == 0:
        return rng.choice([None, True, False])
    if choice == 1:
        return rng.choice([0, -1, 3, 2**70, 10**400, 1.5, -1e308, 1e-320])
    if choice == 2:
        return rng.choice(["", "cat", "req-1", "\u00e9", "1"])
    if choice == 3:
        return rng.random()
    if choice == 4:
        return rng.randrange(-3, 5)
    if choice == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = ["id", "ts", "features", "prediction", "probs", "correct", "label", "weight", "model_version", "x"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(7))}


@pytest.mark.parametrize("kind", ["prediction", "feedback"])
def test_fuzz_random_json_only_raises_decode_error(kind: str) -> None:
    rng = random.Random(1234)
    accepted = 0
    for _ in range(5000):
        obj = _random_json(rng)
        if isinstance(obj, dict) and rng.random() < 0.5:  # bias towards nearly valid events
            obj.setdefault("id", "req-1")
            obj.setdefault("ts", 1.0)
        try:
            decode(json.dumps(obj).encode(), kind, SCHEMA)  # type: ignore[arg-type]
            accepted += 1
        except DecodeError as exc:
            assert exc.reason != "malformed", exc  # the catch-all for codec bugs must never fire
    assert accepted < 5000


def test_fuzz_random_bytes_only_raises_decode_error() -> None:
    rng = random.Random(99)
    valid_bin = encode_binary([Prediction("p", 1.0, np.ones(3, np.float32), 1)])
    for i in range(5000):
        if i % 2:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        else:  # mutate a valid binary record
            b = bytearray(valid_bin)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            raw = bytes(b[: rng.randrange(len(b) + 1)])
        for kind in ("prediction", "feedback"):
            try:
                decode(raw, kind, SCHEMA)  # type: ignore[arg-type]
            except DecodeError as exc:
                assert exc.reason != "malformed", exc


def test_binary_events_past_the_clock_are_refused_too() -> None:
    """The join's watermark is the newest event time: one event stamped in milliseconds would expire the
    partition's every later join, so it goes to the dead letters in either codec."""
    import time

    soon = Prediction("a", time.time() + 60, np.zeros(3, dtype=np.float32), 1)
    assert decode(encode_binary([soon]), "prediction", SCHEMA)[0].id == "a"
    later = Prediction("b", time.time() * 1000, np.zeros(3, dtype=np.float32), 1)
    with pytest.raises(DecodeError) as err:
        decode(encode_binary([later]), "prediction", SCHEMA)
    assert err.value.reason == "ts_in_future" and "milliseconds" in err.value.detail


DENSE = Schema.from_spec("cat,dog,bird", n_features=3)
DENSE = Schema(DENSE.classes, DENSE.n_features, named_features=False)


@pytest.mark.parametrize("features, reason", [
    ({"f0": 1.0, "f1": 2.0}, "named_features"),  # names a dense model would drop
    ({"0": 1.0, "7": 2.0}, "named_features"),  # a position past the width
    ({}, "empty_features"),  # an empty vector
])
def test_a_dense_model_refuses_object_features_it_would_drop(features: dict, reason: str) -> None:
    for raw, kind in ((pred(features=features), "prediction"),
                      (json.dumps({"id": "a", "ts": 1, "label": 1, "features": features}).encode(), "feedback"),
                      (encode_binary([Prediction("a", 1.0, features, 1)]), "prediction")):
        with pytest.raises(DecodeError) as err:
            decode(raw, kind, DENSE)
        assert err.value.reason == reason
        if reason == "named_features":
            assert "--model hashed" in str(err.value)


def test_a_dense_model_takes_position_named_features_and_a_hashed_one_any_names() -> None:
    (ev,) = decode(pred(features={"0": 1.0, "2": 0.5}), "prediction", DENSE)
    assert ev.features == {"0": 1.0, "2": 0.5}
    (ev,) = decode(pred(features={"f0": 1.0}), "prediction", SCHEMA)  # named_features=True: the hashed model
    assert ev.features == {"f0": 1.0}
