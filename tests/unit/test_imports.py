"""Importing the core never loads torch (the MLP alone needs it) or Ray (the actors alone)."""

import subprocess
import sys

import pytest

TORCH_FREE = ["config", "worker", "learner", "model", "trainer", "checkpoint", "divergence", "objective", "predict",
              "evaluate", "ps", "ps.state", "ps.layout", "ps.wire", "ps.shard", "ps.client", "ps.replica",
              "ps.config"]


def _loaded(module: str, probes: list[str]) -> list[str]:
    code = f"import sys, streamlearn.{module}; print(' '.join(p for p in {probes!r} if p in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.parametrize("module", TORCH_FREE)
def test_importing_does_not_load_torch(module: str) -> None:
    assert _loaded(module, ["torch"]) == []


def test_the_actors_module_loads_ray_but_not_torch() -> None:
    assert _loaded("actors", ["torch", "ray"]) == ["ray"]


@pytest.mark.parametrize("module", ["worker", "ps.client", "ps.shard"])
def test_the_worker_and_the_ps_core_do_not_load_ray(module: str) -> None:
    assert _loaded(module, ["ray"]) == []


def test_simulating_digits_loads_neither_sklearn_nor_scipy() -> None:
    code = ("import sys; from streamlearn.config.stream import DataConfig; from streamlearn.simulate import Dataset; "
            "d = Dataset(DataConfig()); assert d.x_train.shape[1] == 64; "
            "print(' '.join(p for p in ['sklearn', 'scipy', 'torch'] if p in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


def test_the_digits_read_from_the_file_are_sklearns() -> None:
    import numpy as np
    from sklearn.datasets import load_digits as sklearn_digits

    from streamlearn.simulate import load_digits

    pixels, target = load_digits()
    reference = sklearn_digits()
    np.testing.assert_array_equal(pixels, reference.data)
    np.testing.assert_array_equal(target, reference.target)
