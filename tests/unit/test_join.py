"""The join: either arrival order, TTL, bounded state, dedup, snapshot/restore."""

import numpy as np
import pytest

from streamlearn.events import Feedback, Prediction
from streamlearn.join import JoinConfig, Joiner
from streamlearn.simulate import DataConfig, SimConfig, Simulator

X = np.zeros(2, np.float32)


def p(i: str, ts: float, label: int = 1) -> Prediction:
    return Prediction(i, ts, X, label)


def test_either_order_and_semantics() -> None:
    j = Joiner()
    assert j.add_prediction(p("a", 1.0, 3)) is None
    ex = j.add_feedback(Feedback("a", 2.0, correct=False))
    assert ex is not None and ex.label == 3 and not ex.positive
    assert j.add_feedback(Feedback("b", 3.0, label=4)) is None  # feedback first
    ex = j.add_prediction(p("b", 2.5, 1))
    assert ex is not None and ex.label == 4 and ex.positive
    ex = j.add_feedback(Feedback("c", 4.0, correct=True, prediction=2, features=X))  # inline
    assert ex is not None and ex.label == 2 and ex.positive
    assert j.pending == 0 and j.counts["joined"] == 2 and j.counts["inline"] == 1


def test_duplicates_yield_one_example() -> None:
    j = Joiner()
    j.add_prediction(p("a", 1.0))
    assert j.add_prediction(p("a", 1.0)) is None
    assert j.add_feedback(Feedback("a", 2.0, correct=True)) is not None
    assert j.add_feedback(Feedback("a", 2.0, correct=True)) is None
    assert j.add_prediction(p("a", 1.0)) is None
    assert j.counts["duplicate"] == 3


def test_ttl_expires_in_event_time() -> None:
    j = Joiner(JoinConfig(ttl_seconds=10))
    j.add_prediction(p("old", 0.0))
    j.add_prediction(p("new", 20.0))  # watermark 20: "old" (ts 0) is past the TTL
    assert j.counts["expired"] == 1
    assert j.add_feedback(Feedback("old", 21.0, correct=True)) is None
    assert j.add_prediction(p("late", 5.0)) is None  # arrives already expired
    assert j.counts["expired"] == 2


def test_max_pending_evicts_oldest() -> None:
    j = Joiner(JoinConfig(max_pending=3))
    for i in range(5):
        j.add_prediction(p(str(i), float(i)))
    assert j.pending == 3 and j.counts["evicted"] == 2
    assert j.add_feedback(Feedback("0", 9.0, correct=True)) is None
    assert j.add_feedback(Feedback("4", 9.0, correct=True)) is not None


def test_snapshot_restore_continues() -> None:
    j = Joiner()
    j.add_prediction(p("a", 1.0))
    j.add_feedback(Feedback("b", 1.0, correct=True))
    j2 = Joiner.restore(j.snapshot())
    assert j2.add_feedback(Feedback("a", 2.0, correct=True)) is not None
    assert j2.add_prediction(p("b", 1.5)) is not None
    assert j2.add_prediction(p("a", 1.5)) is None  # still remembered as joined


def test_simulated_stream_yields_exactly_the_expected_examples() -> None:
    """Out-of-order feedback, duplicates, unjudged and expired ids: count every outcome."""
    sim = Simulator(
        SimConfig(events=3000, judged_share=0.8, duplicate_share=0.1, out_of_order_share=0.3,
                  delay_mean=5.0, rate=10.0, seed=7),
        DataConfig(seed=7),
    )
    ttl = 15.0
    j = Joiner(JoinConfig(ttl_seconds=ttl))
    events = list(sim.events())
    examples = [e for e in (j.add_prediction(ev) if isinstance(ev, Prediction) else j.add_feedback(ev)
                            for ev in events) if e is not None]
    # expected by replaying arrival order with the watermark rule, independently of the joiner
    preds = {ev.id: ev for ev in events if isinstance(ev, Prediction)}
    fbs = {ev.id: ev for ev in events if isinstance(ev, Feedback)}
    first_arrival: dict[tuple[str, str], int] = {}
    for i, ev in enumerate(events):
        first_arrival.setdefault((type(ev).__name__, ev.id), i)
    watermark = np.maximum.accumulate([ev.ts for ev in events])
    expected = set()
    for ident, fb in fbs.items():
        ip, if_ = first_arrival[("Prediction", ident)], first_arrival[("Feedback", ident)]
        first, _second = (preds[ident], fb) if ip < if_ else (fb, preds[ident])
        t_second = max(ip, if_)
        # the first must still be waiting when the second arrives
        if first.ts >= watermark[t_second] - ttl:
            expected.add(ident)
    assert {e.id for e in examples} == expected
    assert len(examples) == len(expected)
    n_dups = len(events) - len(preds) - len(fbs)
    assert n_dups > 100 and j.counts["duplicate"] >= n_dups - 5  # a duplicate of an expired id may expire
    for e in examples:
        truth, pred = sim.truth[e.id], preds[e.id].prediction
        assert e.label == pred and e.positive == (pred == truth)


class _ScanEveryEvent(Joiner):
    """The join without the skip: every new watermark scans the tables' fronts for expired entries."""

    def __init__(self, cfg: JoinConfig) -> None:
        super().__init__(cfg)
        self._due = float("-inf")

    def _refront(self) -> None:
        self._due = float("-inf")


def _late_and_shuffled(n: int, ttl: float, jitter: float) -> list[Prediction | Feedback]:
    """Predictions every 10 ms, 70% judged up to 2 TTLs later (half of those before their prediction
    arrives), event times off arrival by N(0, jitter)."""
    rng = np.random.default_rng(3)
    arrivals: list[tuple[float, Prediction | Feedback]] = []
    for i in range(n):
        at = fa = i * 0.01
        if rng.random() < 0.7:
            fa = at + float(rng.uniform(0, 2 * ttl))
            if rng.random() < 0.5:
                at, fa = fa, at
            arrivals.append((fa, Feedback(str(i), fa + float(rng.normal(0, jitter)), correct=bool(rng.random() < 0.5))))
        arrivals.append((at, p(str(i), at + float(rng.normal(0, jitter)))))
    arrivals.sort(key=lambda a: a[0])
    return [ev for _, ev in arrivals]


def _feed(j: Joiner, events: list[Prediction | Feedback]) -> list[str | None]:
    out = [j.add_prediction(ev) if isinstance(ev, Prediction) else j.add_feedback(ev) for ev in events]
    return [None if ex is None else ex.id for ex in out]


@pytest.mark.parametrize("max_pending", [100_000, 300])
def test_skipping_the_expiry_scan_changes_nothing_on_an_out_of_order_stream(max_pending: int) -> None:
    """The watermark skips the expiry scan until it is a TTL past the oldest front entry: with event times
    out of order, late feedback, and evictions, every outcome and example is what scanning on every event
    gives."""
    cfg = JoinConfig(ttl_seconds=5.0, max_pending=max_pending)
    fast, slow = Joiner(cfg), _ScanEveryEvent(cfg)
    events = _late_and_shuffled(10_000, 5.0, 1.0)
    assert _feed(fast, events) == _feed(slow, events)
    assert fast.counts == slow.counts and fast.pending == slow.pending
    assert fast.counts["expired"] > 500 and fast.counts["joined"] > 500


def _a_then_older_b(kind: str) -> list[Prediction | Feedback]:
    """Waiting entries a (ts 5) then b (ts 1, out of order); c (ts 12) moves the scan's front to a."""
    def wait(i: str, ts: float) -> Prediction | Feedback:
        return p(i, ts) if kind == "prediction" else Feedback(i, ts, correct=True)
    return [wait("a", 5.0), wait("b", 1.0), wait("c", 12.0)]


@pytest.mark.parametrize("kind", ["prediction", "feedback"])
def test_a_join_that_takes_the_front_exposes_an_older_entry_to_expiry(kind: str) -> None:
    """a's partner takes a, the front, out: b (ts 1) is now first and expires once the watermark passes 11."""
    partner = Feedback("a", 12.0, correct=True) if kind == "prediction" else p("a", 12.0)
    events = [*_a_then_older_b(kind), partner, p("d", 13.0)]
    for j in (Joiner(JoinConfig(ttl_seconds=10)), _ScanEveryEvent(JoinConfig(ttl_seconds=10))):
        assert _feed(j, events) == [None, None, None, "a", None]
        assert j.counts["expired"] == 1 and j.pending == 2  # b expired; c and d wait


def test_an_eviction_of_the_front_exposes_an_older_entry_to_expiry() -> None:
    """c's arrival evicts a, the front: b (ts 1) is first, and expires at d rather than being evicted."""
    events = [*_a_then_older_b("prediction"), p("d", 13.0)]
    for j in (Joiner(JoinConfig(ttl_seconds=10, max_pending=2)), _ScanEveryEvent(JoinConfig(ttl_seconds=10,
                                                                                            max_pending=2))):
        _feed(j, events)
        assert (j.counts["evicted"], j.counts["expired"], j.pending) == (1, 1, 2)
