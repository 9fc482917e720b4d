"""A local Ray started as `streamlearn run` starts it listens on loopback only (no --ray-address)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray

# Runs in a fresh interpreter: Ray reads its node address when it is imported, so the probe must set the
# environment the way the CLI does before anything imports ray.
PROBE = r"""
import ipaddress, json, os, sys
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
from streamlearn.cli import loopback_ray  # what `streamlearn run` does first
loopback_ray()
from streamlearn.cluster import start_ray  # what the job does
import ray
from ray_helpers import job_config

start_ray(job_config().ray)

@ray.remote(num_cpus=0)
class Probe:
    def pid(self):
        return os.getpid()

ray.get(Probe.remote().pid.remote())  # an actor's worker, and the runtime env agent that started it

def tree(root):
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    pids, grew = {root}, True
    while grew:
        new = {p for p, pp in parents.items() if pp in pids} - pids
        pids |= new
        grew = bool(new)
    return pids

def inodes(pid):
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(link[8:-1])
    except OSError:
        pass
    return out

def address(hexaddr):
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    v6 = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return v6.ipv4_mapped or v6

owner = {i: p for p in tree(os.getpid()) for i in inodes(p)}
listening = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    with open(table) as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in owner:  # TCP_LISTEN, one of ours
                host, port = cols[1].split(":")
                pid = owner[cols[9]]
                with open(f"/proc/{pid}/cmdline", "rb") as c:
                    name = c.read().split(b"\0")[0].decode()[-40:]
                listening.append([str(address(host)), int(port, 16), name, address(host).is_loopback])
ray.shutdown()
print(json.dumps(listening))
"""


def test_local_ray_listens_on_loopback_only() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=False,
                            cwd=__file__.rsplit("/", 1)[0], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    listening = json.loads(result.stdout.strip().splitlines()[-1])
    names = " ".join(n for *_, n, _ in listening)
    assert "gcs_server" in names and "raylet" in names, listening  # the probe saw Ray's own servers
    exposed = [x for x in listening if not x[3]]
    assert not exposed, f"local Ray listens beyond loopback: {exposed}"
