"""Decode speed per event: the reference JSON decoder vs the typed fast path vs binary, in one run.

Prints one JSON line per (dataset, kind, decoder) with microseconds per event
and ``ratio_to_reference`` (reference time / this time: how many times faster).
Records are the simulated stream's, encoded once; each decoder reads all of
them ``--repeat`` times and the best repeat counts (the machine is noisy).
The ``json_kept_*`` rows decode ~100,000 records keeping every event alive, as
a join does, under CPython's default GC thresholds and under
:func:`streamlearn.worker.tune_gc` (what worker processes use).

    python benchmarks/decode_speed.py
    python benchmarks/decode_speed.py --events 50000 --datasets digits,wide
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import time
from collections.abc import Callable

from streamlearn import jsonfast
from streamlearn.codec import decode, encode_binary, encode_json, reference_json
from streamlearn.events import Event, Prediction, Schema
from streamlearn.simulate import DataConfig, SimConfig, Simulator
from streamlearn.worker import tune_gc

DATASETS = {  # name -> simulator data settings (see benchmarks/peers.py)
    "digits": DataConfig(),
    "small": DataConfig(dataset="synthetic", n_features=64, n_classes=10),
    "wide": DataConfig(dataset="synthetic", n_features=1000, n_classes=100),
    "sparse": DataConfig(dataset="synthetic", n_features=1000, n_classes=10, sparse_active=20),
}


def best_us(fn: Callable[[bytes], object], records: list[bytes], events: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for raw in records:
            fn(raw)
        best = min(best, time.perf_counter() - start)
    return best / events * 1e6


def kept_us(records: list[bytes], kind: str, schema: Schema, tuned: bool) -> float:
    """Decode keeping every event alive (as a join does), under default or tuned GC thresholds."""
    before = gc.get_threshold()
    if tuned:
        tune_gc()
    try:
        gc.collect()
        kept = []
        start = time.perf_counter()
        for raw in records:
            kept.append(decode(raw, kind, schema))  # type: ignore[arg-type]
        return (time.perf_counter() - start) / len(records) * 1e6
    finally:
        gc.set_threshold(*before)


def rows(name: str, data: DataConfig, n: int, repeat: int) -> list[dict[str, object]]:
    sim = Simulator(SimConfig(events=n), data)
    schema = Schema.from_spec(data.n_classes, data.n_features)
    events = list(itertools.islice(sim.events(), n))
    out: list[dict[str, object]] = []
    for kind in ("prediction", "feedback"):
        mine: list[Event] = [e for e in events if isinstance(e, Prediction) == (kind == "prediction")]
        js = [encode_json(e) for e in mine]
        packed = [encode_binary(mine[i : i + 64]) for i in range(0, len(mine), 64)]
        assert all(jsonfast.accept(r, kind, schema) is not None for r in js), "fast path declined valid events"
        timings = {
            "json_reference": best_us(functools.partial(reference_json, kind=kind, schema=schema), js, len(js), repeat),
            "json": best_us(functools.partial(decode, kind=kind, schema=schema), js, len(js), repeat),
            "binary": best_us(functools.partial(decode, kind=kind, schema=schema), packed, len(mine), repeat),
        }
        many = js * max(1, 100_000 // len(js))  # enough live objects for collections to matter
        timings["json_kept_default_gc"] = kept_us(many, kind, schema, tuned=False)
        timings["json_kept_tuned_gc"] = kept_us(many, kind, schema, tuned=True)
        for decoder, us in timings.items():
            out.append({"bench": "decode_speed", "dataset": name, "kind": kind, "decoder": decoder,
                        "events": len(mine), "us_per_event": round(us, 2),
                        "ratio_to_reference": round(timings["json_reference"] / us, 2)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    args = ap.parse_args()
    for name in args.datasets.split(","):
        if name not in DATASETS:
            ap.error(f"--datasets: unknown {name!r}, choose from {', '.join(DATASETS)}")
        for row in rows(name, DATASETS[name], args.events, args.repeat):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
