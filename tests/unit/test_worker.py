"""The worker's pipelined pushes, in process (two workers sharing in-process parameter servers)."""

import os
import time
from typing import Any

import numpy as np
import pytest

from streamlearn.config import JobConfig
from streamlearn.job import build_worker
from streamlearn.learner import Learner, OptimConfig
from streamlearn.model import ModelConfig
from streamlearn.objective import Objective
from streamlearn.ps.client import LocalParamClient
from streamlearn.ps.config import PSConfig
from streamlearn.ps.layout import Layout
from streamlearn.ps.shard import Shard
from streamlearn.simulate import SimConfig
from streamlearn.worker import Worker


@pytest.mark.parametrize("ready", [False, True])
@pytest.mark.parametrize("shards", [1, 2])
def test_replicas_track_the_servers_across_pipelined_pushes(shards: int, ready: bool) -> None:
    """Once flushed, the replica holds exactly the servers' weights and Adagrad accumulators.

    Each step sends several updates, each reply merged as a delta while the next
    push is in flight (and the last one stays in flight into the next step): a
    delta counted twice (or lost) leaves the replica off the servers by the
    other worker's updates. ``ready``: replies there before the next group, which the worker then
    settles first (its group starts from fresher weights).
    """
    cfg = JobConfig(workers=2, partitions=2, max_records=300, sim=SimConfig(events=6000),
                    ps=PSConfig(mode="async", shards=shards, grads_per_push=2, push_budget=0))
    client = LocalParamClient([Shard(i, cfg.ps, cfg.model, cfg.optim) for i in range(shards)], ready)
    workers = [build_worker(cfg, w, [w], client) for w in range(2)]
    multi_push_steps = 0
    for _ in range(12):
        for w in workers:
            r = w.step()
            multi_push_steps += r.pushes >= 2
            assert w.flush().applied or r.pushes == 0  # the step's last push was still in flight
            _, server = client.pull()
            replica = w.learner.flat().read()
            assert replica.shape == server.shape == (2, 65 * 10)  # weights and Adagrad sums of a 64 x 10 model
            np.testing.assert_allclose(replica, server, rtol=0, atol=1e-6)
            assert w.local_since_pull == 0 and w.version == client.shards[0].version
    assert multi_push_steps >= 12  # the pipelined path (a reply merged with a push in flight) ran
    applied = sum(sum(w.applied.values()) for w in workers)
    assert applied == sum(s.version for s in client.shards[:1]) * cfg.optim.batch_size


def test_in_order_runs_each_clients_pushes_in_the_order_sent() -> None:
    """An async actor may start calls out of order; InOrder holds a later push until the earlier one ran."""
    import asyncio

    from streamlearn.ps.shard import InOrder

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


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_layout_splits_a_flat_state_into_each_shards_own(shards: int) -> None:
    """Layout.split gives shard s exactly the flat state its Shard holds; merge undoes split."""

    model = ModelConfig(n_features=7, n_classes=5)  # 5 rows: uneven across 2 and 3 shards
    learner = Learner(model, Objective(), OptimConfig())
    full = learner.flat().read()
    full[1] = np.arange(full.shape[1])  # accumulators that tell columns apart
    layout = Layout.of(model, shards)
    parts = layout.split(full)
    servers = [Shard(s, PSConfig(shards=shards), model, OptimConfig()) for s in range(shards)]
    for s, (part, server) in enumerate(zip(parts, servers, strict=True)):
        np.testing.assert_array_equal(part[0], server.flat().read()[0])
        assert part.shape[1] == sum(p.size for p in server.params), s
    np.testing.assert_array_equal(layout.merge(parts), full)


def test_flat_state_add_scales_weights_and_squared_accumulators() -> None:
    shard = Shard(0, PSConfig(), ModelConfig(n_features=3, n_classes=2), OptimConfig())
    flat = shard.flat()
    before = flat.read()
    delta = np.ones_like(before)
    flat.add(delta, scale=0.5, steps=3)
    after = shard.flat().read()
    np.testing.assert_allclose(after[0] - before[0], 0.5)
    np.testing.assert_allclose(after[1] - before[1], 0.25)
    assert shard.state.steps == 3
    with pytest.raises(ValueError, match="does not fit"):
        flat.write(np.zeros((2, 3)))


@pytest.mark.parametrize("policy", ["drop", "downweight"])
def test_bounded_server_drops_or_downweights_a_stale_update_whole(policy: str) -> None:
    shard = Shard(0, PSConfig(mode="bounded", max_staleness=4, grads_per_push=2, stale_policy=policy),
                  ModelConfig(n_features=3, n_classes=2), OptimConfig())
    update = np.ones_like(shard.flat().read())
    fresh = shard.add_update(update, count=10, version=0)
    assert fresh.kept == [True] * 10 and fresh.version == 10 and fresh.staleness == [0] * 10
    before = shard.flat().read()
    stale = shard.add_update(update, count=2, version=3)  # 7 versions behind, 3 past the bound
    if policy == "drop":
        assert stale.dropped == 2 and stale.kept == [False, False] and stale.version == 10
        np.testing.assert_array_equal(shard.flat().read(), before)
    else:
        assert stale.downweighted == 2 and stale.kept == [True, True] and stale.version == 12
        np.testing.assert_allclose(shard.flat().read()[0] - before[0], 0.25)  # 1 / (1 + 3)
    assert stale.staleness == [7, 7]


def test_worker_steps_with_the_servers_learning_rate_and_clip() -> None:
    """The guard lowers the lr or sets a clip at the servers; a worker's local steps follow from the next reply."""
    cfg = JobConfig(workers=1, partitions=1, max_records=400, sim=SimConfig(events=4000),
                    ps=PSConfig(mode="async", grads_per_push=4, push_budget=0))
    shard = Shard(0, cfg.ps, cfg.model, cfg.optim)
    client = LocalParamClient([shard])
    worker = build_worker(cfg, 0, [0], client)
    worker.step()
    worker.flush()
    assert worker.clip_norm is None and worker.learner.lr == cfg.optim.lr
    shard.scale_lr(0.5)
    shard.clip_norm = 1e-6
    worker.step()  # its first push's reply carries them
    worker.flush()
    assert worker.learner.lr == pytest.approx(cfg.optim.lr * 0.5)
    assert worker.clip_norm == 1e-6
    before = shard.flat().read()
    r = worker.step()
    worker.flush()
    assert r.stats.examples >= 40
    # a clipped gradient adds at most its squared norm (1e-12) to Adagrad's sums; unclipped, this step adds ~0.1
    # (the weights can still move by up to lr where a sum was 0: Adagrad's first step ignores the gradient's scale)
    grown = (shard.flat().read()[1] - before[1]).max()
    assert grown < r.stats.examples * 1e-12, grown


@pytest.mark.parametrize("clip", [None, 0.5])
def test_an_update_and_its_reply_survive_the_wire(clip: float | None) -> None:
    """An update push travels as one bytes object each way (actors.pack_update / pack_reply)."""
    from streamlearn.ps.wire import PushResult, UpdateHead, pack_reply, pack_update, unpack_reply, unpack_update

    rng = np.random.default_rng(0)
    update = rng.normal(size=(2, 13))
    head = UpdateHead(b"\x01" * 16, seq=7, worker=3, version=2**40, steps=32, pull=True)
    got_head, got = unpack_update(pack_update(head, update), width=13)
    assert got_head == head
    np.testing.assert_array_equal(got, update)  # float64: bit for bit
    state = rng.normal(size=(2, 13)).astype(np.float32)
    sent = PushResult(applied=0, dropped=32, staleness=[9] * 32, kept=[False] * 32, version=123, lr=0.15,
                      clip_norm=clip)
    result, got_state = unpack_reply(pack_reply(sent, state), count=32, rows=2)
    assert result == sent
    np.testing.assert_array_equal(got_state, state)
    result, got_state = unpack_reply(pack_reply(PushResult(applied=4, kept=[True] * 4, staleness=[0] * 4), None),
                                     count=4, rows=2)
    assert got_state is None and result.kept == [True] * 4 and result.lr is None and result.clip_norm is None


def test_a_worker_whose_replica_went_non_finite_takes_the_servers_state() -> None:
    """Every batch of a NaN replica fails, so it pushes (and pulls) nothing: it must resync on its own."""
    cfg = JobConfig(workers=1, partitions=1, max_records=400, sim=SimConfig(events=4000),
                    ps=PSConfig(mode="async", grads_per_push=4, push_budget=0))
    client = LocalParamClient([Shard(0, cfg.ps, cfg.model, cfg.optim)])
    worker = build_worker(cfg, 0, [0], client)
    worker.step()
    worker.learner.params[0][0, 0] = np.nan
    r = worker.step()
    assert r.stats.skipped == cfg.ps.grads_per_push  # one group fails whole, then the next pulls and learns
    assert r.pushes > 0 and r.stats.examples > r.stats.skipped * cfg.optim.batch_size
    worker.flush()
    assert np.isfinite(client.pull()[1]).all()
    np.testing.assert_array_equal(worker.learner.flat().read(), client.pull()[1])


def _hashed_job(workers: int, shards: int, buckets: int = 1 << 10, **ps: object) -> tuple[JobConfig, LocalParamClient,
                                                                                         list]:
    from streamlearn.simulate import DataConfig

    cfg = JobConfig(workers=workers, partitions=workers, max_records=300, n_features=200,
                    model=ModelConfig(kind="hashed", n_features=200, buckets=buckets),
                    data=DataConfig("synthetic", 200, 10, sparse_active=12), sim=SimConfig(events=6000),
                    ps=PSConfig(**{"mode": "async", "shards": shards, "grads_per_push": 2, "push_budget": 0, **ps}))  # type: ignore[arg-type]
    client = LocalParamClient([Shard(i, cfg.ps, cfg.model, cfg.optim) for i in range(shards)])
    return cfg, client, [build_worker(cfg, w, [w], client) for w in range(workers)]


def _server_rows(client: LocalParamClient, rows: np.ndarray) -> np.ndarray:
    return client.pull_rows(rows)[1]


@pytest.mark.parametrize("shards", [1, 2])
def test_sparse_replicas_track_the_servers_on_the_rows_they_push(shards: int) -> None:
    """A hashed model pushes the change of the rows a group touched; the reply's rows merge as a delta.

    Once flushed, the rows of the last push (and the bias) hold exactly the
    servers' weights and Adagrad sums, other workers' updates included; a
    delta counted twice or lost (with the next push in flight) breaks that.
    """
    cfg, client, workers = _hashed_job(2, shards)
    n_rows = cfg.model.buckets
    every = np.arange(n_rows)
    multi_push_steps = 0
    for _ in range(10):
        for w in workers:
            r = w.step()
            multi_push_steps += r.pushes >= 2
            w.flush()
            fresh = every[w.replica.loaded_at == w.version]  # the last reply's rows
            assert 0 < len(fresh) < n_rows
            state = w.learner.row_state()
            np.testing.assert_allclose(state.read(fresh), _server_rows(client, fresh), rtol=0, atol=1e-6)
            assert w.local_since_pull == 0 and w.version == client.shards[0].version
    assert multi_push_steps >= 10
    applied = sum(sum(w.applied.values()) for w in workers)
    assert applied == client.shards[0].version * cfg.optim.batch_size


@pytest.mark.parametrize("shards", [1, 3])
def test_one_sparse_worker_is_the_servers_model_to_the_bit(shards: int) -> None:
    """With one worker nothing else moves the servers: after a flush they hold its replica exactly, every row."""
    cfg, client, (worker,) = _hashed_job(1, shards)
    for _ in range(8):
        worker.step()
    worker.flush()
    every = np.arange(cfg.model.buckets)
    replica = worker.learner.row_state().read(every)
    np.testing.assert_array_equal(replica, _server_rows(client, every))
    assert np.count_nonzero(replica[0]) > 100  # it learned something


def test_a_sparse_worker_pulls_rows_it_has_not_loaded_within_max_staleness() -> None:
    """Rows come back in every push's reply, so a worker only pulls the rows of a group that it last loaded
    more than max_staleness versions ago (or never): other workers' learning on them reaches its replica
    before a gradient reads them."""
    cfg, client, (a, b) = _hashed_job(2, 1, max_staleness=4)
    pulls: list[tuple[np.ndarray, int, np.ndarray]] = []
    pull_rows = client.pull_rows

    def spy(rows: np.ndarray) -> tuple[int, np.ndarray]:
        pulls.append((rows.copy(), a.version, a.replica.loaded_at[rows].copy()))
        return pull_rows(rows)

    client.pull_rows = spy  # type: ignore[method-assign]
    a.step()
    a.flush()
    first = len(pulls)
    assert first >= 1 and (pulls[0][2] < 0).all()  # never loaded
    for _ in range(3):
        b.step()
        b.flush()
    assert client.shards[0].version - a.version > 4
    pulls.clear()
    a.step()
    assert pulls, "b moved rows a needs far past max_staleness: a must pull them"
    for rows, version, loaded_at in pulls:
        assert (loaded_at < version - 4).all()  # only stale rows
        np.testing.assert_array_equal(a.replica.loaded_at[rows] >= version, True)
    assert sum(len(r) for r, _, _ in pulls) < cfg.model.buckets


def test_pulls_count_as_calls_to_the_servers() -> None:
    """A step's push_seconds covers its pulls too (a sparse worker's first group pulls every row it reads),
    so push_fraction is the whole time in calls to the servers."""
    _, client, (a, _) = _hashed_job(2, 1)
    pull_rows = client.pull_rows

    def slow(rows: np.ndarray) -> tuple[int, np.ndarray]:
        time.sleep(0.05)
        return pull_rows(rows)

    client.pull_rows = slow  # type: ignore[method-assign]
    r = a.step()
    assert r.pushes >= 1
    assert r.push_wait_seconds >= 0.05 and r.push_seconds >= r.push_wait_seconds


def test_row_layout_splits_a_row_state_into_each_shards_own() -> None:
    from streamlearn.ps.layout import RowLayout

    model = ModelConfig(kind="hashed", buckets=10, n_classes=3)
    learner = Learner(model, Objective(), OptimConfig())
    rows = np.array([0, 3, 4, 9])
    state = learner.row_state()
    full = np.arange(np.prod(state.read(rows).shape), dtype=np.float64).reshape(2, -1)
    layout = RowLayout.of(tuple(tuple(p.shape) for p in learner.params), learner.model.row_params(), 3)
    parts = layout.split(rows, full)
    assert [r.tolist() for r, _ in parts] == [[0], [0, 1], [3]]  # shards hold rows 0-2, 3-5, 6-9; own numbering
    servers = [Shard(s, PSConfig(shards=3), model, OptimConfig()) for s in range(3)]
    for (mine, part), server in zip(parts, servers, strict=True):
        server.row_state().write(mine, part.astype(np.float32))
        np.testing.assert_array_equal(server.row_state().read(mine), part)
    np.testing.assert_array_equal(layout.merge([p for _, p in parts], [len(r) for r, _ in parts]), full)


def test_a_row_update_survives_the_wire() -> None:
    from streamlearn.ps.wire import UpdateHead, pack_rows, unpack_rows

    head = UpdateHead(b"\x02" * 16, seq=3, worker=1, version=77, steps=64, pull=True)
    rows = np.array([5, 17, 2**20])
    update = np.random.default_rng(1).normal(size=(2, 3 * 4 + 4))
    got_head, got_rows, got = unpack_rows(pack_rows(head, rows, update), state_rows=2)
    assert got_head == head
    np.testing.assert_array_equal(got_rows, rows)
    np.testing.assert_array_equal(got, update)


def test_a_dropped_sparse_update_leaves_the_replica_at_the_servers_rows() -> None:
    """Bounded mode drops a stale row update whole; merging its reply takes the worker's own steps on those
    rows back out of its replica, so replica and servers agree again, and its examples are not credited."""
    # 64 buckets: every row a's groups need was loaded within the bound, so a pushes without pulling first
    cfg, client, (a, b) = _hashed_job(2, 1, buckets=64, mode="bounded", max_staleness=30)
    for _ in range(4):
        a.step()
    a.flush()
    assert (a.replica.loaded_at >= 0).all()  # a has every row
    before = client.shards[0].version
    for _ in range(6):
        b.step()
    b.flush()
    assert client.shards[0].version - before > 30  # gradients a has not seen
    r = a.step()
    r.dropped += a.flush().dropped
    assert r.dropped > 0 and r.dropped_examples == r.dropped * cfg.optim.batch_size
    every = np.arange(64)
    np.testing.assert_allclose(a.learner.row_state().read(every), _server_rows(client, every), rtol=0, atol=1e-6)
    applied = sum(sum(w.applied.values()) for w in (a, b))
    assert applied == client.shards[0].version * cfg.optim.batch_size


def test_a_sync_round_averages_sparse_updates_per_row() -> None:
    """Each row takes the step-weighted mean of the updates that touched it (a rare row is not halved by
    the workers that never saw it); the dense part (the bias) the mean of all."""
    model = ModelConfig(kind="hashed", n_features=20, n_classes=3, buckets=64)
    shard = Shard(0, PSConfig(mode="sync"), model, OptimConfig())
    rs = shard.row_state()
    before = rs.read(np.arange(64), np.float64)
    mine, theirs = np.array([1, 5]), np.array([5, 9])
    up_a = np.ones((2, rs.width(2)))  # 2 steps on rows 1 and 5
    up_b = np.full((2, rs.width(2)), 4.0)  # 1 step on rows 5 and 9
    shard.add_to_round(0, up_a, 2, mine)
    shard.add_to_round(1, up_b, 1, theirs)
    shard.add_to_round(2, None, 0)  # a worker with nothing
    assert shard.close_round() == 3 and shard.version == 3
    after = shard.row_state().read(np.arange(64), np.float64)
    change = (after - before)[:, : 64 * rs.cols].reshape(2, 64, rs.cols)
    np.testing.assert_allclose(change[:, 1], 1.0)  # only worker 0 touched it
    np.testing.assert_allclose(change[:, 9], 4.0)  # only worker 1
    np.testing.assert_allclose(change[:, 5], 2.0)  # (2 x 1 + 1 x 4) / 3
    untouched = np.setdiff1d(np.arange(64), [1, 5, 9])
    np.testing.assert_array_equal(change[:, untouched], 0.0)
    np.testing.assert_allclose((after - before)[:, 64 * rs.cols :], 2.0, rtol=1e-6)  # the bias: all three steps


def test_a_local_ray_passes_calls_of_up_to_512_kib_inline_unless_the_user_says_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlearn.actors import INLINE_ENV, inline_larger_calls

    monkeypatch.delenv(INLINE_ENV, raising=False)
    inline_larger_calls()
    assert os.environ[INLINE_ENV] == str(512 * 1024)
    monkeypatch.setenv(INLINE_ENV, "4096")
    inline_larger_calls()
    assert os.environ[INLINE_ENV] == "4096"


def test_a_group_whose_steps_overflow_is_discarded_and_the_servers_stay_finite() -> None:
    """Finite gradients can square past float32 in Adagrad's sums (here: sums already at inf): the group's
    update (after - before) holds inf or NaN, which the servers would add. The worker puts its replica back,
    pushes nothing of the group and credits none of its examples, then takes the servers' finite state; the
    servers refuse a non-finite update anyway."""
    cfg = JobConfig(workers=1, partitions=1, max_records=200, sim=SimConfig(events=2000),
                    ps=PSConfig(mode="async", grads_per_push=2, push_budget=0))
    client = LocalParamClient([Shard(0, cfg.ps, cfg.model, cfg.optim)], replies_ready=True)
    w = build_worker(cfg, 0, [0], client)
    w.step()
    w.flush()
    shard = client.shards[0]
    credited, version = sum(w.applied.values()), shard.version
    w.learner.state.sums[0].fill(np.inf)
    r = w.step()
    w.flush()
    assert r.stats.skipped >= 2  # the first group's micro-batches
    assert r.pushes >= 1  # the later groups, after the worker took the servers' state
    assert sum(w.applied.values()) - credited == (shard.version - version) * cfg.optim.batch_size
    assert np.isfinite(client.pull()[1]).all() and np.isfinite(w.learner.flat().read()).all()
    bad = np.full_like(shard.flat().read(), np.nan, dtype=np.float64)
    refused = shard.add_update(bad, count=3, version=shard.version)
    assert refused.kept == [False] * 3 and refused.dropped == 3 and shard.version == refused.version
    assert np.isfinite(shard.flat().read()).all()


def test_a_gradient_too_large_to_square_in_float32_is_skipped() -> None:
    """A feature of 1e20 gives a finite gradient whose square is not: treated like a non-finite batch."""
    from streamlearn.events import Example

    learner = Learner(ModelConfig(n_features=3, n_classes=2), Objective(), OptimConfig())
    x = np.array([1e20, 0.0, 1.0], dtype=np.float32)
    stats = learner.learn([Example("a", x, 1, True)])
    assert stats.skipped == 1 and stats.grad_norm > 1e18
    assert learner.learn([Example("b", np.ones(3, dtype=np.float32), 1, True)]).skipped == 0


def test_a_push_counts_as_kept_only_if_every_shard_kept_it() -> None:
    """Bounded mode: each shard judges staleness by its own version, and two workers' pushes can reach two
    shards in opposite orders; a push one shard dropped is not credited (counted dropped)."""
    from streamlearn.ps.wire import PushResult, combine

    kept = PushResult(applied=2, kept=[True, True], version=7, staleness=[3, 3])
    dropped = PushResult(dropped=2, kept=[False, False], version=9, staleness=[5, 5])
    both = combine([kept, dropped])
    assert both.kept == [False, False] and both.dropped == 2 and both.applied == 0 and both.version == 7
    assert combine([kept, kept]) == kept and combine([dropped]) is dropped


def test_rollback_moves_the_version_forward_and_a_restore_forgets_the_good_state() -> None:
    """After a rollback every replica's rows are stale (sparse ones pull them again before use); after a
    restore the last good state (possibly newer than the checkpoint) is gone until the driver marks one."""
    cfg = PSConfig(mode="async", max_staleness=10, grads_per_push=2)
    shard = Shard(0, cfg, ModelConfig(n_features=3, n_classes=2), OptimConfig())
    shard.mark_good()
    good = shard.flat().read()
    shard.add_update(np.ones_like(shard.flat().read(), dtype=np.float64), count=20, version=0)
    assert shard.rollback() and shard.version == 20 + 10 + 1
    np.testing.assert_array_equal(shard.flat().read(), good)
    saved = shard.snapshot()
    shard.add_update(np.ones_like(shard.flat().read(), dtype=np.float64), count=5, version=shard.version)
    shard.load(saved)
    assert not shard.has_good() and not shard.rollback() and shard.version == 31


def _run_out(workers: list, client: LocalParamClient) -> None:
    for _ in range(200):
        if all(w.step().exhausted for w in workers):
            break
    for w in workers:
        w.step(drain=True)
        w.flush()


def test_a_checkpoint_resumes_under_another_partition_assignment_exactly_once() -> None:
    """Scaling out (the k8s runbook: more workers, then restart from the checkpoint): one worker's snapshot of
    partitions 0 and 1 is cut into one per partition, and the two new workers finish the stream with every
    example applied exactly once, per partition and polarity, as one worker reading it all does."""
    from streamlearn.job.regroup import regroup

    def job(workers: int) -> tuple[JobConfig, LocalParamClient]:
        cfg = JobConfig(workers=workers, partitions=2, max_records=150, sim=SimConfig(events=1500),
                        ps=PSConfig(mode="async", grads_per_push=2, push_budget=0))
        return cfg, LocalParamClient([Shard(0, cfg.ps, cfg.model, cfg.optim)])

    cfg, client = job(1)
    reference = build_worker(cfg, 0, [0, 1], client)
    _run_out([reference], client)
    expected = reference.applied
    assert set(expected) == {(p, s) for p in (0, 1) for s in ("positive", "negative")}

    cfg, client = job(1)
    first = build_worker(cfg, 0, [0, 1], client)
    for _ in range(4):
        first.step()
    first.flush()
    snapshot = first.snapshot()
    assert snapshot["buffer"] or any(j["preds"] for j in snapshot["ingest"]["joiners"].values())  # mid-stream

    cfg2, _ = job(2)
    parts = regroup([snapshot], [[0], [1]])
    assert [set(p["ingest"]["joiners"]) for p in parts] == [{0}, {1}]
    assert sum(sum(p["ingest"]["counts"].values()) for p in parts) == sum(snapshot["ingest"]["counts"].values())
    workers = [build_worker(cfg2, w, [w], client) for w in range(2)]
    for w, part in zip(workers, parts, strict=True):
        w.restore(part)
    _run_out(workers, client)
    got = workers[0].applied + workers[1].applied
    assert got == expected
    with pytest.raises(ValueError, match="holds partition 1, which this job does not read"):
        regroup([snapshot], [[0]])


class _Sink:
    """A dead-letter sink whose broker acknowledges nothing until told to."""

    def __init__(self) -> None:
        self.waiting: list = []
        self.delivered: list = []
        self.retries = 0
        self.up = False

    def write_many(self, dead: list) -> None:
        self.waiting.extend(dead)

    def retry(self) -> int:
        self.retries += 1
        if not self.up:
            return 0
        sent, self.waiting = self.waiting, []
        self.delivered.extend(sent)
        return len(sent)

    def flush(self, timeout_s: float | None = None) -> None:
        pass

    def unacked(self) -> list:
        return list(self.waiting)

    def close(self) -> None:
        pass


class _Records:
    def __init__(self, records: list) -> None:
        self.records, self.at = records, 0

    def next_batch(self, n: int) -> list:
        out = self.records[self.at : self.at + n]
        self.at += len(out)
        return out

    def positions(self) -> dict:
        return {("p", 0): self.at}

    def seek(self, positions: dict) -> None:
        self.at = positions.get(("p", 0), 0)


def test_dead_letters_the_broker_has_not_acknowledged_travel_in_the_snapshot() -> None:
    """The positions move past a bad record at once; its letter may still wait for the DLQ (broker down).
    The worker retries on every step, and a snapshot carries what is unacknowledged, so a restore from it
    writes them again: none is lost with a crash."""
    from streamlearn.events import Schema
    from streamlearn.ingest import Ingest
    from streamlearn.source import Record

    records = [Record("prediction", "p", 0, i, None, b"{not json" if i % 3 == 0 else
                      b'{"id": "i%d", "ts": 1.0, "prediction": 0, "features": [0.5, 0.5]}' % i) for i in range(9)]
    ps, schema, model = PSConfig(mode="async", grads_per_push=2, push_budget=0), Schema.from_spec(2, 2), \
        ModelConfig(n_features=2, n_classes=2)
    client = LocalParamClient([Shard(0, ps, model, OptimConfig())])
    sink = _Sink()
    w = Worker(0, Learner(model, Objective(), OptimConfig()), Ingest(schema), _Records(records), client, ps,
               dead_letters=sink, max_records=5)
    r = w.step(limit=5)  # offsets 0..4: two bad records
    assert r.dead == {"not_json": 2} and sink.retries == 1 and len(sink.waiting) == 2
    snapshot = w.snapshot()
    assert [d.record.offset for d in snapshot["dead_letters"]] == [0, 3]

    fresh = _Sink()
    again = Worker(0, Learner(model, Objective(), OptimConfig()), Ingest(schema), _Records(records), client, ps,
                   dead_letters=fresh, max_records=5)
    again.restore(snapshot)
    fresh.up = True
    r = again.step()  # reads offsets 5..8 (one more bad record) and retries
    assert r.dead == {"not_json": 1}
    assert [d.record.offset for d in fresh.delivered] == [0, 3, 6] and fresh.unacked() == []


def test_the_time_servers_hold_a_push_is_told_apart_from_the_calls_own_cost() -> None:
    """A reply carries how long its server held the push (sync mode: until the round closed); the worker
    counts the part of its wait the servers still held it, so push_seconds less that is the calls' own cost
    (what --push-budget and the per-call overhead are about)."""
    from streamlearn.ps.wire import PushResult, combine, pack_reply, unpack_reply

    sent = PushResult(applied=4, kept=[True] * 4, version=9, staleness=[1] * 4, held=0.125)
    got, _ = unpack_reply(pack_reply(sent, None), count=4, rows=2)
    assert got.held == 0.125 and got.version == 9 and got.kept == [True] * 4
    assert combine([got, PushResult(applied=4, kept=[True] * 4, held=0.25)]).held == 0.25  # the slowest shard

    _, client, (a, _) = _hashed_job(2, 1)
    submit = client.submit_rows

    class Held:
        """A reply that takes 50 ms to come, 40 ms of them held at the server."""

        def __init__(self, done: Any) -> None:
            self.inner = done

        def done(self) -> bool:
            return False

        def result(self) -> Any:
            time.sleep(0.05)
            result, state = self.inner.result()
            result.held = 0.04
            return result, state

    client.submit_rows = lambda *args: Held(submit(*args))  # type: ignore[method-assign]
    r = a.step()
    a_flush = a.flush()
    pushes = r.pushes
    assert pushes >= 2
    held = r.push_held_seconds + a_flush.push_held_seconds
    assert held == pytest.approx(0.04 * pushes)
    assert r.push_wait_seconds + a_flush.push_wait_seconds >= 0.05 * pushes > held


def test_a_step_polls_until_it_holds_a_group() -> None:
    """A step polls on (max_records at a time, up to STEP_POLLS polls, never past its limit) until it holds
    the cadence's group, so that a push carries the group even where one poll yields less; in sync mode,
    where every push waits for a round, it pushes it at once."""
    from streamlearn.worker import STEP_POLLS

    def worker(mode: str, most: int = 256, max_records: int = 100) -> Worker:
        cfg = JobConfig(workers=1, partitions=1, max_records=max_records, sim=SimConfig(events=20_000),
                        ps=PSConfig(mode=mode, grads_per_push=16, max_grads_per_push=most, push_budget=0))
        server = PSConfig(mode="async", grads_per_push=16, max_grads_per_push=most)  # one worker: a round is a push
        return build_worker(cfg, 0, [0], LocalParamClient([Shard(0, server, cfg.model, cfg.optim)]))

    sync, plain = worker("sync"), worker("async")
    want = 16 * sync.learner.optim_cfg.batch_size
    for _ in range(5):
        r = sync.step()
        assert r.pushes == 1 and sum(r.applied.values()) >= want  # one round, a group's worth
        assert 100 < r.records <= 100 * STEP_POLLS and r.records % 100 == 0
        assert sync.step(limit=150).records <= 150
        a = plain.step()
        assert a.pushes == 1 and a.stats.examples >= want and 100 < a.records <= 100 * STEP_POLLS

    short = worker("sync")  # a source whose batches come short (a read-ahead's tail): the step polls on
    cut = short.source.next_batch
    short.source.next_batch = lambda n: cut(min(n, 37))  # type: ignore[method-assign]
    for _ in range(3):
        r = short.step()
        assert r.pushes == 1 and sum(r.applied.values()) >= want and r.records > 37

    capped = worker("sync", most=16, max_records=1000)  # once joins flow, a poll brings ~70 micro-batches
    per_push = 16 * capped.learner.optim_cfg.batch_size
    steps = [capped.step() for _ in range(8)]
    for r in steps:
        assert r.pushes == 1 and sum(r.applied.values()) == per_push  # never more than most micro-batches
        assert len(capped.buffer) < 1000  # what a step leaves does not pile up
    assert sum(r.records == 0 for r in steps) >= 3  # steps that train on what earlier ones left

