"""The distributed job on Ray: parity with the single-process loop, each PS mode, checkpoints."""

import numpy as np
import pytest
from ray_helpers import heldout_accuracy, job_config, single_process

from streamlearn.events import Prediction
from streamlearn.job import Job
from streamlearn.simulate import Simulator

pytestmark = pytest.mark.ray


def test_parity_one_worker_one_server_sync(ray_cluster) -> None:
    cfg = job_config(workers=1, ps={"mode": "sync"})
    job = Job(cfg)
    summary = job.run()
    trainer, per_partition = single_process(cfg)
    ours = trainer.learner.params
    assert len(ours) == len(job.weights)
    for a, b in zip(ours, job.weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert summary["model_examples_by_partition"] == {str(p): n for p, n in sorted(per_partition.items())}
    assert summary["updates"] == trainer.progress.updates


HASHED = {"model": {"kind": "hashed", "buckets": 4096}, "data": {"dataset": "synthetic", "sparse_active": 8}}


@pytest.mark.parametrize("model", ["linear", "hashed"])
def test_parity_holds_in_async_mode_for_one_worker(ray_cluster, model: str) -> None:
    """Outside sync mode a worker applies its own gradients locally and pushes the change (a dense model's
    flat state, a sparse one's rows): one worker is still exact."""
    cfg = job_config(workers=1, ps={"mode": "async", "grads_per_push": 16, "shards": 2},
                     **(HASHED if model == "hashed" else {}))
    job = Job(cfg)
    job.run()
    trainer, _ = single_process(cfg)
    for a, b in zip(trainer.learner.params, job.weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["sync", "async", "bounded"])
def test_two_workers_match_single_process_accuracy(ray_cluster, mode: str) -> None:
    cfg = job_config(workers=2, partitions=2, ps={"mode": mode}, sim={"events": 20000})
    job = Job(cfg)
    summary = job.run()
    trainer, per_partition = single_process(cfg)
    from streamlearn.evaluate import heldout_scores
    from streamlearn.simulate import Dataset

    data = Dataset(cfg.data)
    x, y = data.heldout()
    reference = heldout_scores(trainer.learner, x, y, data.features(x))["heldout_accuracy"]
    accuracy = heldout_accuracy(cfg, job)
    assert accuracy >= reference - 0.02, (mode, accuracy, reference)
    in_model = sum(summary["model_examples_by_partition"].values())
    assert in_model + summary["stale_dropped_examples"] == sum(per_partition.values())
    if mode != "bounded":
        assert summary["stale_dropped_examples"] == 0
        assert summary["model_examples_by_partition"] == {str(p): n for p, n in sorted(per_partition.items())}
    assert summary["workers"] == 2 and summary["ps_mode"] == mode
    assert 0 < summary["push_wait_fraction"] <= summary["push_fraction"] < 1


def test_sharded_servers_split_rows_and_match_one_shard(ray_cluster) -> None:
    one = Job(job_config(workers=1, ps={"mode": "sync", "shards": 1}))
    one.run()
    three = Job(job_config(workers=1, ps={"mode": "sync", "shards": 3}))
    three.run()
    for a, b in zip(one.weights, three.weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_hashed_model_sparse_push_and_pull(ray_cluster, mode: str) -> None:
    cfg = job_config(workers=2, ps={"shards": 2, "mode": mode}, sim={"events": 3000}, **HASHED)
    job = Job(cfg)
    summary = job.run()
    _, per_partition = single_process(cfg)
    assert summary["model_examples_by_partition"] == {str(p): n for p, n in sorted(per_partition.items())}
    assert heldout_accuracy(cfg, job) > 0.5


def test_checkpoint_resume_continues_exactly(ray_cluster, tmp_path) -> None:
    """Stop after some events; a second run restores and consumes only the rest: totals are exact."""
    ck = {"dir": str(tmp_path), "every_seconds": 0.5}
    first = Job(job_config(checkpoint=ck, stop={"max_events": 3000}, max_records=500)).run()
    assert first["checkpoints"] >= 1 and first["stop_reason"] == "max_events"
    assert first["events_consumed"] == 3000  # queued steps never poll past what is left
    second = Job(job_config(checkpoint=ck, max_records=500)).run()
    assert second["restored_from"] is not None
    cfg = job_config()
    _, per_partition = single_process(cfg)
    assert second["model_examples_by_partition"] == {str(p): n for p, n in sorted(per_partition.items())}
    n_records = sum(1 for ev in Simulator(cfg.sim, cfg.data).events() if isinstance(ev, Prediction)) * 2
    assert first["events_consumed"] + second["events_consumed"] == n_records


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_max_events_stops_at_exactly_that_many_records(ray_cluster, mode: str) -> None:
    """Steps queued on two workers share what is left of --max-events: none polls past it, and in sync mode
    a worker with nothing left still steps, answering its rounds."""
    s = Job(job_config(workers=2, partitions=2, ps={"mode": mode}, stop={"max_events": 1001}, max_records=300)).run()
    assert (s["events_consumed"], s["stop_reason"]) == (1001, "max_events")


def test_mixed_for_100k_events_raises_no_divergence_in_the_job(ray_cluster) -> None:
    """The job's detector samples the norm between steps: a long healthy run must not false-alarm."""
    cfg = job_config(workers=2, sim={"events": 100_000}, divergence={"guard": "rollback"})
    job = Job(cfg)
    summary = job.run()
    assert summary["divergence_events"] == {} and summary["rollbacks"] == 0
    assert heldout_accuracy(cfg, job) > 0.95


def test_sync_round_closes_without_a_silent_worker(ray_cluster) -> None:
    """Sync mode: a round waits for every worker's update, but a silent one cannot stall it: the round
    closes sync_timeout_seconds after it opened, with the updates it has."""
    import numpy as np
    import ray

    from streamlearn.actors import ParamServerActor
    from streamlearn.learner import OptimConfig
    from streamlearn.model import ModelConfig
    from streamlearn.ps import PSConfig
    from streamlearn.ps.wire import UpdateHead, pack_update, unpack_reply

    model = ModelConfig(n_features=4, n_classes=3)
    server = ParamServerActor.remote(0, PSConfig(mode="sync", sync_timeout_seconds=1.0), model, OptimConfig(), 2)
    update = np.zeros((2, 15))
    update[0] = -0.25  # three steps moved every weight by -0.25 and added 1 to every Adagrad sum
    update[1] = 1.0
    head = UpdateHead(b"\x00" * 16, seq=1, worker=0, version=0, steps=3, pull=True)
    ref = server.push_update.remote(pack_update(head, update))
    ready, _ = ray.wait([ref], timeout=0.3)
    assert not ready, "the round closed before the other worker or the timeout"
    result, state = unpack_reply(ray.get(ref, timeout=60), count=3, rows=2)
    assert (result.applied, result.version) == (3, 3)
    assert state is not None
    np.testing.assert_allclose(state[0], -0.25)  # the one update in the round, as it was sent
    np.testing.assert_allclose(state[1], 1.0)
    ray.kill(server)


def test_sync_round_averages_the_workers_updates_by_their_steps(ray_cluster) -> None:
    """Two workers' updates in one round: the servers add their average, weighted by the steps each carries,
    and both replies carry the same state; a worker with nothing (no steps) does not dilute it."""
    import numpy as np
    import ray

    from streamlearn.actors import ParamServerActor
    from streamlearn.learner import OptimConfig
    from streamlearn.model import ModelConfig
    from streamlearn.ps import PSConfig
    from streamlearn.ps.wire import UpdateHead, pack_update, unpack_reply

    model = ModelConfig(n_features=4, n_classes=3)
    server = ParamServerActor.remote(0, PSConfig(mode="sync"), model, OptimConfig(), 3)
    a, b, nothing = np.full((2, 15), 1.0), np.full((2, 15), 4.0), np.zeros((2, 15))
    refs = [server.push_update.remote(pack_update(UpdateHead(bytes([w]) * 16, 1, w, 0, steps, True), u))
            for w, (u, steps) in enumerate([(a, 2), (b, 1), (nothing, 0)])]
    replies = [unpack_reply(r, count=1, rows=2) for r in ray.get(refs, timeout=60)]
    for result, state in replies:
        assert result.version == 3
        assert state is not None
        np.testing.assert_allclose(state, 2.0)  # (2 x 1 + 1 x 4) / 3
    ray.kill(server)


def test_a_round_closes_when_the_worker_it_waits_for_leaves(ray_cluster) -> None:
    """When the driver stops stepping a worker (the job ends) it lowers the round's worker count: a round
    that already has everyone else's update closes then, not sync_timeout_seconds later."""
    import numpy as np
    import ray

    from streamlearn.actors import ParamServerActor
    from streamlearn.learner import OptimConfig
    from streamlearn.model import ModelConfig
    from streamlearn.ps import PSConfig
    from streamlearn.ps.wire import UpdateHead, pack_update

    model = ModelConfig(n_features=4, n_classes=3)
    server = ParamServerActor.remote(0, PSConfig(mode="sync", sync_timeout_seconds=600.0), model, OptimConfig(), 2)
    ref = server.push_update.remote(pack_update(UpdateHead(b"\x00" * 16, 1, 0, 0, 1, False), np.ones((2, 15))))
    ready, _ = ray.wait([ref], timeout=0.3)
    assert not ready, "the round closed before the other worker"
    ray.get(server.set_workers.remote(1), timeout=60)
    ray.get(ref, timeout=60)  # without the close it would wait out the 600 s timeout
    ray.kill(server)


def test_a_sync_step_says_whether_a_poll_came_back_empty(ray_cluster) -> None:
    """The driver marks a worker dry only when a poll found its partitions empty: a sync step whose buffer
    already holds a round does not poll, and says so, though it too brings no records."""
    import ray

    from streamlearn.actors import ParamServerActor
    from streamlearn.build import build_worker
    from streamlearn.config import JobConfig
    from streamlearn.ps import PSConfig
    from streamlearn.ps.client import RayParamClient
    from streamlearn.simulate import SimConfig

    cfg = JobConfig(workers=1, partitions=1, max_records=400, sim=SimConfig(events=2000),
                    ps=PSConfig(mode="sync", grads_per_push=4, max_grads_per_push=4))
    server = ParamServerActor.remote(0, cfg.ps, cfg.model, cfg.optim, 1)
    worker = build_worker(cfg, 0, [0], RayParamClient.of([server], cfg.model))
    round_examples = 4 * cfg.optim.batch_size
    steps = []  # (a round was buffered before the step, its result)
    for _ in range(300):  # 2,000 events, a round of 16 examples a step: the partition runs dry well before
        full = len(worker.buffer) >= round_examples
        steps.append((full, worker.step()))
    assert sum(full for full, _ in steps) > 10
    assert all(r.records == 0 and not r.polled_empty and r.pushes == 1 for full, r in steps if full)
    empty = [r for full, r in steps if r.polled_empty]
    assert empty and all(r.records == 0 and not full for full, r in steps if r.polled_empty)
    assert all(r.polled_empty for full, r in steps[-20:])  # at the end every step polls, and finds nothing
    ray.kill(server)


@pytest.mark.parametrize("model", ["linear", "hashed"])
def test_no_actor_of_a_linear_or_hashed_job_imports_torch(ray_cluster, model: str) -> None:
    """torch is the MLP's alone: the workers and servers of the other models never load it (~650 MB each)."""
    import ray

    from streamlearn.actors import ParamServerActor, WorkerActor

    cfg = job_config(workers=1, ps={"shards": 1}, sim={"events": 400}, **(HASHED if model == "hashed" else {}))
    name = f"torchless-{model}"  # the worker finds its shards by name
    server = ParamServerActor.options(name=name).remote(0, cfg.ps, cfg.model, cfg.optim, 1)
    worker = WorkerActor.remote(0, cfg, [0], [name])
    ray.get(worker.step.remote())
    assert ray.get([worker.imported.remote("numpy"), server.imported.remote("numpy")]) == [True, True]
    assert ray.get([worker.imported.remote("torch"), server.imported.remote("torch")]) == [False, False]
    ray.get(worker.close.remote())
    ray.kill(worker)
    ray.kill(server)
