"""Checkpoint files: events in the join state and the buffer survive a save and a read, old format too."""

import time
from pathlib import Path

import numpy as np
import pytest

from streamlearn import checkpoint
from streamlearn.events import Example, Feedback, Prediction
from streamlearn.join import Joiner

# Written by commit 84b6762 (events were frozen dataclasses then): a joiner holding prediction "a" (features
# [0, 1, 2], class 2, model version 7, probs [0.2, 0.3, 0.5]) and feedback "b" (wrong), and a buffer with
# Example("c", [1, 1, 1], label 1, negative, weight 2, ts 3).
DATACLASS_EVENTS = Path(__file__).parent / "data" / "checkpoint-dataclass-events.slck"
# Written by format 1 (torch tensors, torch Adagrad state): a hashed model (3 classes, 8 buckets) on 2 shards,
# each after one update of 3 steps.
FORMAT_1 = Path(__file__).parent / "data" / "checkpoint-format-1-hashed.slck"


def test_events_survive_a_save_and_a_read(tmp_path: Path) -> None:
    j = Joiner()
    j.add_prediction(Prediction("a", 1.0, np.arange(3, dtype=np.float32), 2, None, np.array([0.5, 0.25, 0.25])))
    j.add_feedback(Feedback("b", 2.0, label=1))
    checkpoint.save(tmp_path, {"joiner": j.snapshot()})
    found = checkpoint.latest(tmp_path)
    assert found is not None
    restored = Joiner.restore(found[1]["joiner"])
    ex = restored.add_feedback(Feedback("a", 3.0, correct=True))
    assert ex is not None and ex.label == 2 and ex.positive and np.array_equal(ex.features, [0, 1, 2])
    assert ex.probs is not None and ex.probs.tolist() == [0.5, 0.25, 0.25]


def test_a_checkpoint_written_while_events_were_dataclasses_still_loads() -> None:
    """Skipping it as unreadable would restart the job from the earliest offsets and train everything twice."""
    state = checkpoint.read(DATACLASS_EVENTS)
    worker = state["workers"][0]
    (buffered,) = worker["buffer"]
    assert isinstance(buffered, Example)
    assert (buffered.id, buffered.label, buffered.positive, buffered.weight, buffered.ts) == ("c", 1, False, 2.0, 3.0)
    j = Joiner.restore(worker["joiners"][0])
    assert j.pending == 2
    ex = j.add_feedback(Feedback("a", 3.0, correct=False))
    assert ex is not None and (ex.label, ex.positive) == (2, False) and np.array_equal(ex.features, [0, 1, 2])
    assert ex.probs is not None and ex.probs.tolist() == [0.2, 0.3, 0.5]
    ex = j.add_prediction(Prediction("b", 3.0, np.zeros(3, dtype=np.float32), 0))
    assert ex is not None and (ex.label, ex.positive) == (0, False)  # b's waiting feedback said "wrong"


def test_a_clock_that_steps_back_never_prunes_the_checkpoint_just_written(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Names sort by a stamp that only grows in a directory, and temp files of crashed writes are removed."""
    first = checkpoint.save(tmp_path, {"version": 1}, keep=2)
    (tmp_path / ".checkpoint-00000000000000000001.slck.tmp").write_bytes(b"half a write")
    now = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: now - 3_600 * 10**9)  # an hour back
    second = checkpoint.save(tmp_path, {"version": 2}, keep=2)
    third = checkpoint.save(tmp_path, {"version": 3}, keep=2)
    assert second.exists() and third.exists() and not first.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [second.name, third.name]
    found = checkpoint.latest(tmp_path)
    assert found is not None and found[0] == third and found[1]["version"] == 3


def test_a_format_1_checkpoint_loads_into_shards_as_plain_arrays() -> None:
    """Format 1 held torch tensors and torch optimizer state; it reads as format 2 and restores a shard."""
    from streamlearn.learner import OptimConfig
    from streamlearn.ps import PSConfig, merge
    from streamlearn.ps.shard import Shard

    state = checkpoint.read(FORMAT_1)
    assert state["format"] == checkpoint.FORMAT == 2
    for s in state["shards"]:
        assert all(isinstance(a, np.ndarray) for a in s["params"] + s["sums"])
        assert (s["steps"], s["version"], s["lr"]) == (3, 3, pytest.approx(0.3))
    bias, table = merge([s["params"] for s in state["shards"]])
    np.testing.assert_allclose(bias, [-2.325, 0.784, 1.4934], atol=1e-4)
    assert table.shape == (8, 3)
    shards = [Shard(i, PSConfig(shards=2), state["model"], OptimConfig()) for i in range(2)]
    for shard, saved in zip(shards, state["shards"], strict=True):
        shard.load(saved)
    np.testing.assert_allclose(shards[0].state.sums[0], [0.094], atol=1e-4)
    np.testing.assert_array_equal(merge([s.weights() for s in shards])[1], table)


def test_a_checkpoint_holds_no_torch_objects(tmp_path: Path) -> None:
    """Format 2 pickles plain arrays: reading one back never needs torch."""
    import subprocess
    import sys

    from streamlearn.learner import OptimConfig
    from streamlearn.model import ModelConfig
    from streamlearn.ps import PSConfig
    from streamlearn.ps.shard import Shard

    shard = Shard(0, PSConfig(), ModelConfig(n_features=3, n_classes=2), OptimConfig())
    path = checkpoint.save(tmp_path, {"format": checkpoint.FORMAT, "shards": [shard.snapshot()]})
    code = ("import sys; from streamlearn import checkpoint; s = checkpoint.read(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch'; print(s['shards'][0]['params'][0].shape)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(2, 3)"
