"""Learning speed per micro-batch: the compiled loop vs the per-batch numpy path, in one run.

A worker learns a group of micro-batches at a time (``Learner.learn_batches``);
for a dense linear model on SGD or Adagrad that is one compiled call
(:mod:`streamlearn.linear_kernel`), else ``gradients`` then ``apply`` per
micro-batch in numpy. Both learners see the same examples (the simulated
stream's, decoded and joined once), in groups of ``--group`` micro-batches,
``--repeat`` times from fresh weights; the best repeat counts (the machine is
noisy). One JSON line per (dataset, batch size, path) with microseconds per
micro-batch and per example, the final held-out-free training loss, and
``speedup`` (numpy time / compiled time), then the ratios in a summary line.

    python benchmarks/learn_speed.py
    python benchmarks/learn_speed.py --datasets digits,wide --batch-sizes 4,32
"""

from __future__ import annotations

import argparse
import json
import time

from streamlearn.events import Example, Schema
from streamlearn.ingest import Ingest
from streamlearn.join import JoinConfig
from streamlearn.learner import Learner, OptimConfig
from streamlearn.model import ModelConfig
from streamlearn.objective import Objective
from streamlearn.simulate import DataConfig, SimConfig, Simulator
from streamlearn.source import MemorySource

DATASETS = {  # name -> simulator data settings (as benchmarks/decode_speed.py)
    "digits": DataConfig(),
    "small": DataConfig(dataset="synthetic", n_features=64, n_classes=10),
    "wide": DataConfig(dataset="synthetic", n_features=1000, n_classes=100),
}


def examples(data: DataConfig, events: int) -> tuple[list[Example], ModelConfig]:
    sim = Simulator(SimConfig(events=events), data)
    schema = Schema.from_spec(sim.data.n_classes, sim.data.n_features)
    source = MemorySource(sim.events(block=64), 1)
    ingest = Ingest(schema, JoinConfig())
    out: list[Example] = []
    while not source.exhausted:
        out.extend(ingest.process(source.next_batch(5000)).examples)
    return out, ModelConfig(n_features=sim.data.n_features, n_classes=sim.data.n_classes)


def measure(model: ModelConfig, data: list[Example], batch_size: int, group: int, compiled: bool,
            repeat: int) -> tuple[float, float]:
    """(best seconds for all of ``data``, mean loss of the last repeat)."""
    batches = [data[i : i + batch_size] for i in range(0, len(data) - batch_size + 1, batch_size)]
    groups = [batches[i : i + group] for i in range(0, len(batches), group)]
    best, loss = float("inf"), float("nan")
    for _ in range(repeat):
        learner = Learner(model, Objective(), OptimConfig(batch_size=batch_size))
        learner.compiled = learner.compiled and compiled
        learner.warm_up()
        start = time.perf_counter()
        total = 0.0
        n = 0
        for g in groups:
            _, stats = learner.learn_batches(g)
            total += stats.loss_positive + stats.loss_negative
            n += stats.examples
        best = min(best, time.perf_counter() - start)
        loss = total / n
    return best, loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000, help="predictions simulated per dataset")
    ap.add_argument("--datasets", default="digits,small,wide")
    ap.add_argument("--batch-sizes", default="4,32")
    ap.add_argument("--group", type=int, default=64, help="micro-batches per call (a worker's push group)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    speedups: dict[str, float] = {}
    for name in args.datasets.split(","):
        data, model = examples(DATASETS[name], args.events)
        for b in (int(v) for v in args.batch_sizes.split(",")):
            rows = {}
            for compiled in (False, True):
                seconds, loss = measure(model, data, b, args.group, compiled, args.repeat)
                batches = len(data) // b
                rows[compiled] = seconds
                print(json.dumps({"bench": "learn_speed", "dataset": name, "batch_size": b,
                                  "path": "compiled" if compiled else "numpy", "examples": len(data),
                                  "us_per_batch": round(seconds / batches * 1e6, 2),
                                  "us_per_example": round(seconds / len(data) * 1e6, 3),
                                  "train_loss": round(loss, 4)}), flush=True)
            speedups[f"{name} b{b}"] = round(rows[False] / rows[True], 2)
    print(json.dumps({"bench": "learn_speed", "row": "summary", "speedup_numpy_over_compiled": speedups}))


if __name__ == "__main__":
    main()
