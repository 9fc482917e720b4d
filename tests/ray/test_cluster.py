"""`demo` starts a Ray of its own whatever the machine's Ray files and RAY_ADDRESS say, and an unreachable
--ray-address fails with a message instead of waiting."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A Ray temp root of the test's own (short: Ray's socket paths live under it), so the stale cluster file
    written here misleads no other Ray on the machine."""
    path = Path(tempfile.mkdtemp(prefix="slray", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def demo(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("STREAMLEARN_")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "streamlearn.cli", "demo", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("stale", ["cluster-file", "RAY_ADDRESS"])
def test_demo_starts_its_own_ray_whatever_the_machine_says(stale: str, ray_tmp: Path) -> None:
    gone = f"127.0.0.1:{closed_port()}"  # a cluster that was stopped without `ray stop`
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(gone + "\n")
    env = {"RAY_TMPDIR": str(ray_tmp)} if stale == "cluster-file" else {"RAY_TMPDIR": str(ray_tmp),
                                                                          "RAY_ADDRESS": gone}
    proc = demo("--events", "2000", "--workers", "1", "--partitions", "1", "--ray-num-cpus", "1", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"events_consumed"' in proc.stdout


def test_unreachable_ray_address_fails_with_what_to_check(ray_tmp: Path) -> None:
    gone = f"127.0.0.1:{closed_port()}"
    proc = demo("--ray-address", gone, env={"RAY_TMPDIR": str(ray_tmp)})
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert err and err[-1].startswith("streamlearn: error: --ray-address " + gone), proc.stderr[-3000:]
    assert "ray status --address" in err[-1]


def test_auto_without_a_cluster_fails_with_what_to_do(ray_tmp: Path) -> None:
    proc = demo("--ray-address", "auto", env={"RAY_TMPDIR": str(ray_tmp)})
    assert proc.returncode != 0
    assert "no Ray cluster found" in proc.stderr and "ray start --head" in proc.stderr, proc.stderr[-3000:]
