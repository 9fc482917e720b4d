"""The embedded event stream: a deployed model and the people who judge it.

A :class:`Simulator` draws inputs from a dataset, lets a logging policy (the
deployed model) predict, and emits prediction events; some of them are judged
after a random event-time delay: "correct", "wrong", or the true label. It can
add label noise, duplicates and out-of-order arrival. Events come out in
arrival order, as a Kafka consumer would see them.
"""

from __future__ import annotations

import heapq
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from streamlearn.config.stream import DATASETS as DATASETS
from streamlearn.config.stream import POLICIES as POLICIES
from streamlearn.config.stream import DataConfig as DataConfig
from streamlearn.config.stream import SimConfig as SimConfig
from streamlearn.events import Event, Feedback, Prediction

# scores (N, D) inputs -> (N, K) probabilities; the live model for epsilon-greedy
Scorer = Callable[[np.ndarray], np.ndarray]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, (1797, 64) pixels 0-16 and their labels, read from the file the package ships
    without importing it: scikit-learn and SciPy would add ~75 MB to every process that simulates."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the digits dataset needs scikit-learn installed (pip install scikit-learn)")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # another layout: the public loader
        from sklearn.datasets import load_digits as sklearn_digits

        bunch = sklearn_digits()
        return bunch.data, bunch.target
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(np.int64)


class Dataset:
    """Training inputs to draw from and a held-out set to score on."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        if cfg.dataset == "digits":
            pixels, target = load_digits()
            x = (pixels / 16.0).astype(np.float32)
            y = target.astype(np.int64)
            order = np.random.default_rng(cfg.seed + 1).permutation(len(y))
            cut = int(0.7 * len(y))
            self.x_train, self.y_train = x[order[:cut]], y[order[:cut]]
            self.x_test, self.y_test = x[order[cut:]], y[order[cut:]]
            self.n_features, self.n_classes = 64, 10
        else:
            self.n_features, self.n_classes = cfg.n_features, cfg.n_classes
            self.centres = self.rng.normal(size=(cfg.n_classes, cfg.n_features)).astype(np.float32)
            self.direction = self.rng.normal(size=(cfg.n_classes, cfg.n_features)).astype(np.float32)
            self.x_test, self.y_test = self._synthetic(2000, t=0)
        self.t = 0

    def _synthetic(self, n: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        y = self.rng.integers(0, self.n_classes, size=n)
        centres = self.centres + self.direction * (self.cfg.drift * t / 10_000)
        scale = self.cfg.noise * np.sqrt(2.0)  # centres are ~N(0, I): pairwise distance ~ sqrt(2 D)
        x = centres[y] + self.rng.normal(scale=scale, size=(n, self.n_features)).astype(np.float32)
        return x.astype(np.float32), y

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next n (x, y) of the stream."""
        if self.cfg.dataset == "digits":
            i = self.rng.integers(0, len(self.y_train), size=n)
            out = self.x_train[i], self.y_train[i]
        else:
            out = self._synthetic(n, self.t)
        self.t += n
        return out

    def heldout(self) -> tuple[np.ndarray, np.ndarray]:
        """Held-out set; for a drifting synthetic stream, drawn at the current concept."""
        if self.cfg.dataset == "synthetic" and self.cfg.drift > 0:
            state = self.rng.bit_generator.state
            out = self._synthetic(2000, self.t)
            self.rng.bit_generator.state = state
            return out
        return self.x_test, self.y_test

    def features(self, x: np.ndarray) -> list[object]:
        """Event features for inputs: dense vectors, or named sparse ones."""
        k = self.cfg.sparse_active
        if k == 0:
            return list(x)
        top = np.argsort(-np.abs(x), axis=1)[:, :k]
        return [{f"f{j}": float(row[j]) for j in cols} for row, cols in zip(x, top, strict=True)]


def fixed_policy(data: Dataset, n_train: int = 200, seed: int = 0) -> Scorer:
    """A weak deployed model: least-squares on a few labelled examples."""
    rng = np.random.default_rng(seed + 7)
    x, y = data.draw(n_train) if data.cfg.dataset == "synthetic" else (data.x_train, data.y_train)
    if data.cfg.dataset == "digits":
        i = rng.choice(len(y), size=min(n_train, len(y)), replace=False)
        x, y = x[i], y[i]
    xb = np.hstack([x, np.ones((len(x), 1), np.float32)])
    target = np.eye(data.n_classes, dtype=np.float32)[y]
    w, *_ = np.linalg.lstsq(xb, target, rcond=None)

    def score(inputs: np.ndarray) -> np.ndarray:
        z = np.hstack([inputs, np.ones((len(inputs), 1), np.float32)]) @ w * 5.0
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    return score


class Simulator:
    def __init__(self, sim: SimConfig, data: DataConfig, scorer: Scorer | None = None) -> None:
        self.cfg = sim
        self.data = Dataset(data)
        self.rng = np.random.default_rng(sim.seed + 1000)
        self.scorer = scorer  # the live model, for epsilon-greedy
        self.deployed = fixed_policy(self.data, seed=sim.seed) if sim.policy != "random" or scorer else None
        self.truth: dict[str, int] = {}  # id -> true label, for tests

    def _policy(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chosen classes (N,), serving distributions (N, K))."""
        n, k = len(x), self.data.n_classes
        if self.cfg.policy == "random":
            return self.rng.integers(0, k, size=n), np.full((n, k), 1.0 / k)
        scorer = self.scorer if self.cfg.policy == "epsilon-greedy" and self.scorer else self.deployed
        assert scorer is not None
        greedy = scorer(x).argmax(axis=1)
        if self.cfg.policy == "fixed":
            return greedy, np.eye(k)[greedy]
        explore = self.rng.random(n) < self.cfg.epsilon
        chosen = np.where(explore, self.rng.integers(0, k, size=n), greedy)
        probs = np.full((n, k), self.cfg.epsilon / k)
        probs[np.arange(n), greedy] += 1.0 - self.cfg.epsilon
        return chosen, probs

    def events(self, block: int = 32) -> Iterator[Event]:
        """All events in arrival order; predictions are scored ``block`` at a time."""
        cfg = self.cfg
        heap: list[tuple[float, int, Event]] = []
        seq = 0

        def push(arrival: float, ev: Event) -> None:
            nonlocal seq
            heapq.heappush(heap, (arrival, seq, ev))
            seq += 1
            if self.rng.random() < cfg.duplicate_share:
                heapq.heappush(heap, (arrival + self.rng.exponential(1.0), seq, ev))
                seq += 1

        made = 0
        while made < cfg.events:
            n = min(block, cfg.events - made)
            x, y = self.data.draw(n)
            chosen, probs = self._policy(x)
            feats = self.data.features(x)
            for j in range(n):
                ident = f"req-{cfg.seed}-{made + j}"
                ts = cfg.start_ts + (made + j) / cfg.rate
                self.truth[ident] = int(y[j])
                pred = Prediction(ident, ts, feats[j], int(chosen[j]), 1,  # type: ignore[arg-type]
                                  probs[j] if cfg.log_probs else None)
                arrival = ts
                if self.rng.random() < cfg.judged_share:
                    fb = self._judge(ident, ts, int(y[j]), int(chosen[j]), feats[j])
                    if self.rng.random() < cfg.out_of_order_share:
                        arrival = fb.ts + self.rng.exponential(1.0)  # prediction held up in the pipe
                    push(fb.ts, fb)
                push(arrival, pred)
            made += n
            horizon = cfg.start_ts + made / cfg.rate
            while heap and heap[0][0] <= horizon:
                yield heapq.heappop(heap)[2]
        while heap:
            yield heapq.heappop(heap)[2]

    def _judge(self, ident: str, ts: float, truth: int, chosen: int, feats: object) -> Feedback:
        cfg, k = self.cfg, self.data.n_classes
        fb_ts = ts + (self.rng.exponential(cfg.delay_mean) if cfg.delay_mean > 0 else 0.0)
        noisy = self.rng.random() < cfg.label_noise
        inline = feats if self.rng.random() < cfg.inline_share else None
        if self.rng.random() < cfg.label_share:
            label = truth
            if noisy:
                label = int((truth + self.rng.integers(1, k)) % k)
            return Feedback(ident, fb_ts, label=label, features=inline)  # type: ignore[arg-type]
        correct = (chosen == truth) != noisy
        return Feedback(ident, fb_ts, correct=correct, features=inline,  # type: ignore[arg-type]
                        prediction=chosen if inline is not None else None)
