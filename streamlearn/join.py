"""Join predictions with their feedback by prediction id, in either arrival order.

State is bounded two ways:

* time: an entry older than ``ttl_seconds`` of event time behind the newest
  event seen (the watermark) expires; a feedback for an expired or never-seen
  prediction teaches nothing and is counted ``expired``;
* space: at most ``max_pending`` waiting entries; past that the oldest one is
  evicted (counted ``evicted``).

Each id yields at most one example: a second prediction or feedback for an id
that is pending or already joined is counted ``duplicate``. Joined ids are
remembered for the TTL (bounded by ``max_pending`` too) for that check.

Feedback that needs its prediction (not a duplicate, not inline) is counted
``feedback`` as it arrives; ``joined / feedback`` is the join hit rate, which
producers that partition the two topics differently drive far below 1.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from streamlearn.config.runtime import JoinConfig as JoinConfig
from streamlearn.events import Example, Feedback, Prediction, example_from

OUTCOMES = ("joined", "duplicate", "expired", "evicted")


class Joiner:
    def __init__(self, cfg: JoinConfig | None = None, partition: int = 0) -> None:
        self.cfg = cfg or JoinConfig()
        self.partition = partition  # stamped on the examples it emits
        # id -> (event time, event); insertion order ~ arrival order, for eviction
        self._preds: OrderedDict[str, tuple[float, Prediction]] = OrderedDict()
        self._feedback: OrderedDict[str, tuple[float, Feedback]] = OrderedDict()
        self._done: OrderedDict[str, float] = OrderedDict()  # joined ids, for dedup
        self.watermark = float("-inf")
        self.counts: Counter[str] = Counter()
        # no front entry of the three tables is older than this, so until the watermark is a TTL past it
        # nothing can expire and a new watermark skips the scan (_advance; most events)
        self._due = float("inf")

    @property
    def pending(self) -> int:
        return len(self._preds) + len(self._feedback)

    # add_prediction and add_feedback run once per record: they read the config
    # and the tables into locals and bound the tables inline (measured in
    # benchmarks/kafka_throughput.py's ingest rows)

    def add_prediction(self, pred: Prediction) -> Example | None:
        ident, ts = pred.id, pred.ts
        if ts > self.watermark:
            self._advance(ts)
        preds = self._preds
        if ident in preds or ident in self._done:
            self.counts["duplicate"] += 1
            return None
        waiting = self._feedback.pop(ident, None)
        if waiting is not None:
            self._exposed(self._feedback)
            return self._joined(pred, waiting[1])
        if ts < self.watermark - self.cfg.ttl_seconds:
            self.counts["expired"] += 1
            return None
        preds[ident] = (ts, pred)
        if ts < self._due:
            self._due = ts
        if len(preds) + len(self._feedback) > self.cfg.max_pending:
            self._evict(preds)
        return None

    def add_feedback(self, fb: Feedback) -> Example | None:
        ident, ts = fb.id, fb.ts
        if ts > self.watermark:
            self._advance(ts)
        feedback = self._feedback
        if ident in feedback or ident in self._done:
            self.counts["duplicate"] += 1
            return None
        waiting = self._preds.pop(ident, None)
        if waiting is not None:
            self.counts["feedback"] += 1
            self._exposed(self._preds)
            return self._joined(waiting[1], fb)
        if fb.features is not None:  # inline feedback may carry everything it needs: no join
            inline = example_from(None, fb, self.partition)
            if inline is not None:
                self._remember(ident)
                self.counts["inline"] += 1
                return inline
        self.counts["feedback"] += 1
        if ts < self.watermark - self.cfg.ttl_seconds:
            self.counts["expired"] += 1
            return None
        feedback[ident] = (ts, fb)
        if ts < self._due:
            self._due = ts
        if len(self._preds) + len(feedback) > self.cfg.max_pending:
            self._evict(feedback)
        return None

    def _joined(self, pred: Prediction, fb: Feedback) -> Example | None:
        self._remember(pred.id)
        self.counts["joined"] += 1
        return example_from(pred, fb, self.partition)

    def _remember(self, ident: str) -> None:
        done = self._done
        done[ident] = self.watermark
        if self.watermark < self._due:
            self._due = self.watermark
        if len(done) > self.cfg.max_pending:
            done.popitem(last=False)  # in watermark order: what follows is no older

    def _evict(self, table: OrderedDict[str, Any]) -> None:
        while self.pending > self.cfg.max_pending and table:
            table.popitem(last=False)
            self.counts["evicted"] += 1
        self._refront()

    def _advance(self, ts: float) -> None:
        """Move the watermark up to ``ts`` and expire what fell behind it by more than the TTL."""
        self.watermark = ts
        horizon = ts - self.cfg.ttl_seconds
        if horizon <= self._due:
            return
        for table in (self._preds, self._feedback):
            while table:
                ident, (t, _) = next(iter(table.items()))
                if t >= horizon:
                    break  # entries are in near arrival order: stop at the first live one
                del table[ident]
                self.counts["expired"] += 1
        done = self._done
        while done:
            ident, t = next(iter(done.items()))
            if t >= horizon:
                break
            del done[ident]
        self._refront()

    def _exposed(self, table: OrderedDict[str, Any]) -> None:
        """A join took an entry out of ``table``: if it was the front, the new front may be older than ``_due``."""
        if table:
            t = next(iter(table.values()))[0]
            if t < self._due:
                self._due = t

    def _refront(self) -> None:
        """Set ``_due`` from the tables' front entries (after a scan or an eviction exposed new ones)."""
        fronts = [next(iter(t.values()))[0] for t in (self._preds, self._feedback) if t]
        if self._done:
            fronts.append(next(iter(self._done.values())))
        self._due = min(fronts, default=float("inf"))

    def snapshot(self) -> dict[str, Any]:
        """Plain-data state for a checkpoint (events are frozen structs, picklable)."""
        return {
            "preds": list(self._preds.items()),
            "feedback": list(self._feedback.items()),
            "done": list(self._done.items()),
            "watermark": self.watermark,
            "counts": dict(self.counts),
        }

    @classmethod
    def restore(cls, state: dict[str, Any], cfg: JoinConfig | None = None, partition: int = 0) -> Joiner:
        j = cls(cfg, partition)
        j._preds = OrderedDict(state["preds"])
        j._feedback = OrderedDict(state["feedback"])
        j._done = OrderedDict(state["done"])
        j.watermark = state["watermark"]
        j.counts = Counter(state["counts"])
        j._refront()
        return j
