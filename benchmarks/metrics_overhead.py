"""Cost of the metrics: Metrics.observe (folding one worker step) next to the training that step did.

The driver calls :meth:`Metrics.observe` once per worker step. A step polls
``max_records`` records (default 2000: about 1000 predictions and their
feedback, so about 1000 examples) and trains every full micro-batch of them:
about 125 micro-batches of 8, pushed in groups of ``grads_per_push`` (32).
This benchmark times, in one process and interleaved round by round:

* ``train_us``: one micro-batch's ``Learner.gradients`` + ``Learner.apply``
  (batch 8, 64 dense features, 10 classes, mixed objective, Adagrad: the
  demo's model), the batch tensors prepared once;
* ``observe_us``: one ``Metrics.observe`` of a StepResult shaped like such a
  step (both topics' counts, join counts, four partitions x polarity applied
  counts, one staleness per micro-batch, one batch time per push group, and
  the worker's sample of per-example losses for the loss histogram);

and prints one JSON line:

    {"bench": "metrics_overhead", "train_us": ..., "observe_us": ..., "micro_batches_per_step": 125,
     "ratio": observe / (125 * train), "ratio_per_micro_batch": observe / train, ...}

``ratio`` is the overhead the job pays (target < 0.02); ``ratio_per_micro_batch``
is the bound if observe ever ran once per micro-batch.

    python benchmarks/metrics_overhead.py [--calls 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from streamlearn.events import Example
from streamlearn.learner import BatchStats, Learner, OptimConfig
from streamlearn.metrics import Metrics
from streamlearn.model import ModelConfig
from streamlearn.objective import Objective
from streamlearn.worker import LOSS_SAMPLE, StepResult

TARGET = 0.02


def training_step(batch_size: int, features: int, classes: int, seed: int = 0) -> Callable[[], None]:
    """One micro-batch of the demo's learner: gradients, then the optimizer step."""
    rng = np.random.default_rng(seed)
    learner = Learner(ModelConfig("linear", n_features=features, n_classes=classes, seed=seed), Objective("mixed"),
                      OptimConfig(batch_size=batch_size))
    examples = []
    for i in range(batch_size):
        probs = rng.dirichlet(np.ones(classes))
        examples.append(Example(id=f"e{i}", features=rng.normal(size=features).astype(np.float32),
                                label=int(rng.integers(classes)), positive=i % 10 == 0, probs=probs))
    batch = learner.batch(examples)

    def step() -> None:
        grads, _ = learner.gradients(batch)
        assert grads is not None
        learner.apply(grads)

    return step


def step_result(micro_batches: int, batch_size: int, group: int) -> StepResult:
    """A StepResult like one default worker step over two partitions (predict-before-learn numbers made up)."""
    examples = micro_batches * batch_size
    positives = examples // 10
    r = StepResult(worker=0, records=2 * examples, version=12345, replica_drift=0.02, pending=150, pushes=0)
    r.counts = Counter({("predictions", "consumed"): examples, ("feedback", "consumed"): examples})
    r.join = Counter({"joined": examples})
    r.applied = Counter({(p, pol): n // 2 for p in (0, 1)
                         for pol, n in (("positive", positives), ("negative", examples - positives))})
    r.stats = BatchStats(positive=positives, negative=examples - positives, positive_correct=int(positives * 0.9),
                         negative_avoided=int((examples - positives) * 0.99), loss_positive=0.3 * positives,
                         loss_negative=0.02 * (examples - positives), kl_sum=5.0 * examples, kl_count=examples,
                         grad_norm=0.05)
    rng = np.random.default_rng(1)
    r.stats.losses = [(i % 10 == 0, float(v)) for i, v in enumerate(rng.exponential(0.1, size=LOSS_SAMPLE))]
    r.staleness = [i % group for i in range(micro_batches)]
    r.pushes = math.ceil(micro_batches / group)
    r.batch_seconds = [0.02] * r.pushes
    return r


def per_call_us(fn: Callable[[], None], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=2000, help="calls per timed round")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median round is reported")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--records", type=int, default=2000, help="records per worker step (JobConfig.max_records)")
    p.add_argument("--grads-per-push", type=int, default=32)
    args = p.parse_args()

    micro_batches = args.records // 2 // args.batch_size  # a prediction and its feedback make one example
    train = training_step(args.batch_size, args.features, args.classes)
    result = step_result(micro_batches, args.batch_size, args.grads_per_push)
    metrics = Metrics()
    observe: Callable[[], None] = lambda: metrics.observe(result)  # noqa: E731
    for fn in (train, observe):  # warm up: allocator, label children, lazy imports
        per_call_us(fn, max(1, args.calls // 10))
    rows: dict[str, list[float]] = {"train": [], "observe": []}
    for _ in range(args.rounds):
        rows["train"].append(per_call_us(train, args.calls))
        rows["observe"].append(per_call_us(observe, args.calls))
    train_us, observe_us = (statistics.median(rows[k]) for k in ("train", "observe"))
    step_us = micro_batches * train_us
    print(json.dumps({
        "bench": "metrics_overhead",
        "batch_size": args.batch_size, "features": args.features, "classes": args.classes,
        "micro_batches_per_step": micro_batches, "calls": args.calls, "rounds": args.rounds,
        "train_us": round(train_us, 2),
        "observe_us": round(observe_us, 2),
        "step_train_us": round(step_us, 1),
        "ratio": round(observe_us / step_us, 5),
        "ratio_per_micro_batch": round(observe_us / train_us, 4),
        "target": TARGET,
        "within_target": observe_us / step_us < TARGET,
        "spread": {k: [round(min(v), 2), round(max(v), 2)] for k, v in rows.items()},
    }))


if __name__ == "__main__":
    main()
