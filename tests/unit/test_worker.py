"""The worker's pipelined pushes, in process (two workers sharing in-process parameter servers)."""

import pytest
import torch

from streamlearn.config import JobConfig
from streamlearn.job import build_worker
from streamlearn.paramserver import LocalParamClient, PSConfig, Shard
from streamlearn.simulate import SimConfig


@pytest.mark.parametrize("shards", [1, 2])
def test_replicas_track_the_servers_across_pipelined_pushes(shards: int) -> None:
    """Once flushed, the replica holds exactly the servers' weights.

    Each step sends several groups, each reply merged as a delta while the next
    push is in flight (and the last one stays in flight into the next step): a
    delta counted twice (or lost) leaves the replica off the servers by the
    other worker's updates.
    """
    cfg = JobConfig(workers=2, partitions=2, max_records=300, sim=SimConfig(events=6000),
                    ps=PSConfig(mode="async", shards=shards, grads_per_push=2))
    client = LocalParamClient([Shard(i, cfg.ps, cfg.model, cfg.optim) for i in range(shards)])
    workers = [build_worker(cfg, w, [w], client) for w in range(2)]
    multi_push_steps = 0
    for _ in range(12):
        for w in workers:
            r = w.step()
            multi_push_steps += r.pushes >= 2
            assert w.flush().applied or r.pushes == 0  # the step's last push was still in flight
            _, server = client.pull(None)
            for p, s in zip(w.learner.model.parameters(), server.values(), strict=True):
                torch.testing.assert_close(p.detach(), s, rtol=0, atol=1e-6)
            assert w.local_since_pull == 0 and w.version == client.shards[0].version
    assert multi_push_steps >= 12  # the pipelined path (a reply merged with a push in flight) ran
    applied = sum(sum(w.applied.values()) for w in workers)
    assert applied == sum(s.version for s in client.shards[:1]) * cfg.optim.batch_size


def test_in_order_runs_each_clients_pushes_in_the_order_sent() -> None:
    """An async actor may start calls out of order; InOrder holds a later push until the earlier one ran."""
    import asyncio

    from streamlearn.paramserver import InOrder

    ran: list[tuple[str, int]] = []

    async def push(order: InOrder, client: str, seq: int) -> None:
        await order.turn(client, seq)
        ran.append((client, seq))

    async def main() -> None:
        order = InOrder()
        await push(order, "a", 1)  # a client's first push sets its count
        # arrive as 4, 3, b1, 2: a's run as 2, 3, 4; b (another client) is not held up by a
        tasks = [asyncio.create_task(push(order, c, s)) for c, s in [("a", 4), ("a", 3), ("b", 1), ("a", 2)]]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)

    asyncio.run(main())
    assert [s for c, s in ran if c == "a"] == [1, 2, 3, 4]
    assert ran.index(("b", 1)) < ran.index(("a", 2))
