"""Whether a job's input is going anywhere: where its records went, and the warnings a user must read.

One place computes the accounting (:func:`records`) and the two warnings a job gives when its input teaches
little: most records went to the dead letters (a stream that does not match ``--n-features`` /
``--classes``, a producer's changed format), or most feedback never met its prediction (producers that
partition the two topics differently). The loop says them once on stderr as soon as the shares are clear
(``final=False``), the summary lists them at the end (``final=True``) and the CLI prints them last.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from streamlearn.config import HealthConfig, JobConfig

if TYPE_CHECKING:
    from streamlearn.job.summary import Totals

# a dead letter's reason -> the setting that most often causes it
HINTS = {
    "bad_dense_length": "--n-features",
    "unknown_class": "--classes",
    "bad_prediction": "--classes",
    "bad_label": "--classes",
    "bad_probs": "--classes",
    "named_features": "--model hashed",
    "empty_features": "--model hashed",
}
TOP_REASONS = 3
CONTRACT = "README.md, section 'Event contract v1'"


def records(t: Totals) -> dict[str, int]:
    """Where the consumed records went, each to one part (a binary record holding k events counts k times):
    became an example (both events of a joined pair, an inline feedback), a dead letter, a duplicate id,
    expired or evicted from the join, pending in the join at the end, or rewound (in the join when a recovery
    went back to a checkpoint; read again after it). Events restored into the joins from a checkpoint end in
    one part too: the parts add up to the records consumed plus ``t.restored``."""
    j = t.join
    return {
        "example": 2 * j["joined"] + j["inline"],
        "dead_letter": t.outcome("invalid"),
        "duplicate": j["duplicate"],
        "expired": j["expired"],
        "evicted": j["evicted"],
        "pending": sum(t.waiting.values()),
        "rewound": t.rewound,
    }


def join_hit_rate(t: Totals) -> float | None:
    """Share of the feedback that needs a join which met its prediction; None before any did."""
    need = t.join["feedback"]
    return round(t.join["joined"] / need, 4) if need else None


def dead_letter_warning(t: Totals, cfg: JobConfig, final: bool) -> str | None:
    h: HealthConfig = cfg.health
    consumed, dead = t.outcome("consumed"), t.outcome("invalid")
    if not dead or dead <= h.max_dead_letter_share * consumed or (not final and consumed < h.min_records):
        return None
    top = Counter(t.dead).most_common(TOP_REASONS)
    reasons = ", ".join(f"{reason} {n}" for reason, n in top)
    where = (f"the dead-letter topic {cfg.kafka.dlq_topic} holds them with the reason in the streamlearn.error "
             "header" if cfg.source == "kafka" else "the embedded stream counts them only")
    hints = sorted({HINTS[r] for r, _ in top if r in HINTS})
    check = (f"do {' and '.join(hints)} match the producers' events? " if hints else "") + \
        f"the wire format is in {CONTRACT}"
    return (f"{dead} of {consumed} records ({dead / consumed:.0%}) went to the dead letters ({reasons}): {where}; "
            f"{check}")


def join_warning(t: Totals, cfg: JobConfig, final: bool) -> str | None:
    h: HealthConfig = cfg.health
    need, met = t.join["feedback"], t.join["joined"]
    floor = max(1, h.min_records // 10) if final else h.min_records
    if need < floor or met >= h.min_join_hit_rate * need:
        return None
    dead = t.outcome("invalid")
    also = f"; {dead} records went to the dead letters, their predictions may be among them" if dead else ""
    return (f"only {met} of {need} feedback events ({met / need:.0%}) found their prediction{also}: producers "
            "must key both topics by prediction id and partition them alike, with the Java client's default "
            "partitioner (murmur2; librdkafka-based clients such as confluent-kafka and kcat: "
            f"partitioner=murmur2_random), see {CONTRACT}")


def due(t: Totals, cfg: JobConfig, final: bool) -> dict[str, str]:
    """The warnings due now by kind, dead letters first; while most records are dead letters, the feedback
    that waits for their predictions says nothing about the join, so no join warning then."""
    dead = dead_letter_warning(t, cfg, final)
    if dead is not None:
        return {"dead_letters": dead}
    join = join_warning(t, cfg, final)
    return {"join": join} if join is not None else {}


def warnings(t: Totals, cfg: JobConfig, final: bool) -> list[str]:
    return list(due(t, cfg, final).values())
