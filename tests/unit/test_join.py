"""The join: either arrival order, TTL, bounded state, dedup, snapshot/restore."""

import numpy as np

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
