"""Worker snapshots cut again for another partition assignment, when a checkpoint is restored by a job with
another worker count (or more partitions)."""

from __future__ import annotations

from collections import Counter
from typing import Any


def regroup(snapshots: list[dict[str, Any]], assignment: list[list[int]]) -> list[dict[str, Any]]:
    """Worker snapshots taken under one partition assignment, cut again for ``assignment`` (another worker
    count, or partitions added). A snapshot's parts each belong to one partition (its joiner, the positions
    of its two topic-partitions, buffered examples, lineage counts, unacknowledged dead letters) and move
    with it; the ingest counts are running totals and go to the first worker. A partition no snapshot has
    starts at its earliest offset. A partition the new assignment lacks would lose its state: refused."""
    owner = {p: w for w, parts in enumerate(assignment) for p in parts}
    out: list[dict[str, Any]] = [{"ingest": {"joiners": {}, "positions": {}, "counts": {}}, "positions": {},
                                  "buffer": [], "applied": {}, "dead_letters": []} for _ in assignment]

    def to(partition: int) -> dict[str, Any]:
        if partition not in owner:
            raise ValueError(f"the checkpoint holds partition {partition}, which this job does not read: "
                             "run with at least as many partitions as the checkpoint's job")
        return out[owner[partition]]

    counts: Counter[tuple[str, str]] = Counter()
    for snap in snapshots:
        ingest = snap["ingest"]
        for p, joiner in ingest["joiners"].items():
            to(int(p))["ingest"]["joiners"][p] = joiner
        for tp, offset in ingest["positions"].items():
            to(tp[1])["ingest"]["positions"][tp] = offset
        for tp, offset in snap["positions"].items():
            to(tp[1])["positions"][tp] = offset
        for ex in snap["buffer"]:
            to(ex.partition)["buffer"].append(ex)
        for (p, polarity), n in snap["applied"].items():
            to(p)["applied"][(p, polarity)] = n
        for letter in snap.get("dead_letters", []):
            to(letter.record.partition)["dead_letters"].append(letter)
        counts.update(ingest["counts"])
    out[0]["ingest"]["counts"] = dict(counts)
    return out
