"""The JSON fast path accepts only what the reference decoder accepts, and yields the same event."""

import json
import random

import numpy as np
import pytest

from streamlearn import jsonfast
from streamlearn.codec import DecodeError, reference_json
from streamlearn.events import Event, Schema

SCHEMA = Schema.from_spec("cat,dog,bird", n_features=3)

VALID = {
    "prediction": {"id": "req-1", "ts": 17.5, "features": [0.5, 0, -2.25], "prediction": 1,
                   "model_version": 3, "probs": [0.2, 0.5, 0.3]},
    "feedback": {"id": "req-1", "ts": 18.0, "correct": False, "prediction": 2, "weight": 2,
                 "features": {"a": 1.0, "b": -3}},
}
# values chosen to sit on the edges of the contract: bools vs numbers, float32 range, empty, class names
ODD = [None, True, False, 0, -1, 1, 2, 3, 2**70, -(2**70), 10**400, 1.5, -0.0, 3.4e38, 3.41e38, 3.5e38, 1e39,
       -1e308, 1e-320, "", "cat", "bird", "fox", "1", "\u00e9", [], [1, 2], [0.1, 0.2, 0.3], [1, True, 2],
       [1e39, 0, 0], [0.2, 0.5, -0.1], [1, 1, 1, 1], {}, {"a": 1}, {"a": True}, {"a": 1e39}, {"a": "x"}]


def _mutate(rng: random.Random, kind: str) -> bytes:
    obj = dict(VALID[kind])
    for _ in range(rng.randrange(1, 4)):
        key = rng.choice([*obj, "label", "correct", "prediction", "x"])
        if rng.random() < 0.25:
            obj.pop(key, None)
        else:
            obj[key] = rng.choice(ODD)
    text = json.dumps(obj)
    if rng.random() < 0.1:  # a duplicate key: the last one wins in both decoders
        text = text[:-1] + ', "id": "req-2"}'
    if rng.random() < 0.05:
        text = " " + text.replace('"id"', '"\\u0069d"') + " \n"
    return text.encode()


def _same(a: Event, b: Event) -> bool:
    if type(a) is not type(b):
        return False
    for name in a.__struct_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)) or x.dtype != y.dtype:
                return False
            if not np.array_equal(x, y):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


@pytest.mark.parametrize("kind", ["prediction", "feedback"])
def test_fast_path_agrees_with_the_reference(kind: str) -> None:
    rng = random.Random(7)
    both = fast_only = ref_only = 0
    for _ in range(6000):
        raw = _mutate(rng, kind)
        fast = jsonfast.accept(raw, kind, SCHEMA)
        try:
            ref: Event | None = reference_json(raw, kind, SCHEMA)  # type: ignore[arg-type]
        except DecodeError:
            ref = None
        if fast is not None:
            assert ref is not None, f"fast path accepted what the reference rejects: {raw!r}"
            assert _same(fast, ref), (raw, fast, ref)
            both += 1
        elif ref is not None:
            ref_only += 1
    assert fast_only == 0
    # the fast path must carry the valid traffic, not hand almost everything to the reference
    assert both > 500 and ref_only < both / 10, (both, ref_only)


def test_fast_path_declines_what_only_the_reference_can_name() -> None:
    for raw in [b'{"id": "", "ts": 1, "correct": true}', b'{"id": "a", "ts": NaN, "correct": true}',
                b'{"id": "a", "ts": 1, "correct": true, "label": 1}', b'{"id": "a", "ts": 1, "label": "fox"}',
                b'{"id": "a", "ts": 1, "correct": 1}', b'{"id": "a", "ts": 1, "label": 1, "weight": 0}',
                b'{"id": "a", "ts": 1, "label": 1, "prediction": 1}', b'\xff',
                b'{"id": "a", "ts": 1, "label": 1, "weight": 1e39}', b'{"id": "a", "ts": 1e12, "correct": true}']:
        assert jsonfast.accept(raw, "feedback", SCHEMA) is None, raw
        with pytest.raises(DecodeError):
            reference_json(raw, "feedback", SCHEMA)
