"""What the driver asks of a job's actors, as one interface: the Ray actors (:mod:`.ray_fleet`) or, in tests,
plain objects in this process. Every call either answers or raises :class:`ActorLost`."""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import Any, Protocol

from streamlearn.worker import StepResult


class ActorLost(Exception):
    """An actor died or is restarting: its state is gone, recover from the newest checkpoint."""


class Fleet(Protocol):
    """The workers (each on its partitions) and the parameter-server shards of one job.

    A step is asynchronous: :meth:`step` queues it and returns a handle that
    :meth:`wait` reports ready and :meth:`result` reads. The other calls go to
    every worker or every shard and return when all answered.
    """

    workers: int  # how many

    def step(self, worker: int, limit: int | None, drain: bool = False) -> Hashable: ...

    def wait(self, steps: Collection[Hashable], timeout: float | None) -> list[Hashable]:
        """The steps among ``steps`` that finished (at least one, unless ``timeout`` passed first)."""
        ...

    def result(self, step: Hashable) -> StepResult: ...

    def forget(self, steps: Collection[Hashable]) -> None:
        """Let ``steps`` finish or fail (recovery): no error, their work is replayed."""
        ...

    def flush(self, quiet: bool = False) -> list[StepResult]:
        """Settle the pushes still in flight on every worker (``quiet``: a lost one is replayed, no error)."""
        ...

    def snapshots(self) -> list[dict[str, Any]]: ...

    def restore(self, states: list[dict[str, Any]]) -> None: ...

    def shard_states(self) -> list[dict[str, Any]]: ...

    def load(self, states: list[dict[str, Any]]) -> None: ...

    def set_workers(self, n: int) -> None:
        """Sync mode: how many workers a round waits for."""
        ...

    def norm_sq(self) -> float: ...

    def mark_good(self) -> None: ...

    def has_good(self) -> bool: ...

    def rollback(self) -> None: ...

    def scale_lr(self, factor: float) -> None: ...

    def set_clip(self, norm: float | None) -> None: ...

    def weights(self) -> list[Any]:
        """The model's parameters, merged over the shards."""
        ...

    def check(self) -> None:
        """Raise ActorLost if an actor restarted since it was built or last :meth:`accept`-ed: a restarted
        actor answers calls with fresh state, so reads that go into a checkpoint or the summary are checked."""
        ...

    def accept(self) -> None:
        """Take every actor as it is now (a restore is about to load them all)."""
        ...

    def close(self) -> None:
        """Close the workers' sources and sinks and end every actor (best effort)."""
        ...
