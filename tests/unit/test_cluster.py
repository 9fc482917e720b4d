"""Which Ray a job uses: its own local one unless an address is given, whatever the environment says."""

import socket
from pathlib import Path

import pytest

from streamlearn.cluster import RayUnreachable, endpoint, probe, resolve


def test_no_address_is_a_local_ray_whatever_the_environment_says(tmp_path: Path) -> None:
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.0.0.9:6379\n")
    env = {"RAY_ADDRESS": "10.0.0.8:6379", "RAY_TMPDIR": str(tmp_path)}
    assert resolve(None, env) is None
    assert resolve("", env) is None
    assert resolve("local", env) is None


def test_auto_is_ray_address_then_the_cluster_file(tmp_path: Path) -> None:
    assert resolve("auto", {"RAY_ADDRESS": "10.0.0.8:6379", "RAY_TMPDIR": str(tmp_path)}) == "10.0.0.8:6379"
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.0.0.9:6379\n")
    assert resolve("auto", {"RAY_TMPDIR": str(tmp_path)}) == "10.0.0.9:6379"
    assert resolve("head:6379", {"RAY_ADDRESS": "10.0.0.8:6379"}) == "head:6379"  # an explicit address wins


def test_auto_without_a_cluster_fails_saying_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RayUnreachable, match=r"--ray-address auto: no Ray cluster found .*ray start --head"):
        resolve("auto", {"RAY_TMPDIR": str(tmp_path)})


@pytest.mark.parametrize(("address", "expected"), [
    ("10.0.0.8:6379", ("10.0.0.8", 6379)), ("ray://head:10001", ("head", 10001)), ("[::1]:6379", ("::1", 6379)),
    ("head", None), ("head:port", None), (":6379", None),
])
def test_endpoint(address: str, expected: tuple[str, int] | None) -> None:
    assert endpoint(address) == expected


def test_probe_of_a_closed_port_fails_naming_the_address_and_what_to_check() -> None:
    with socket.socket() as s:  # a port nobody listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    with pytest.raises(RayUnreachable, match=rf"--ray-address {address}: cannot join .*ray status --address"):
        probe(address, 5.0)
    with pytest.raises(RayUnreachable, match="not an address"):
        probe("nohost", 5.0)
