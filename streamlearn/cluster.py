"""Starting or joining Ray for a job.

Without an address a job starts a Ray of its own on this machine (``address="local"``): whatever
``RAY_ADDRESS`` or Ray's record of the last ``ray start`` cluster say, a local job never runs inside another
cluster. It starts only what the job needs: no dashboard unless asked, every process on loopback. With an
address (``auto`` said explicitly included) the job joins that cluster, and gives up after
``ray.connect_seconds`` with a message naming the address and what to check, instead of waiting forever.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

from streamlearn.config import RayConfig

log = logging.getLogger(__name__)

# Ray picks a new local node's address when `ray` is imported; with this at 0 it is 127.0.0.1, so the GCS,
# raylet, workers, agents and metrics servers all listen on loopback (else on the outward address or *).
# Only for a Ray started here: `ray start` refuses to join a cluster with it set.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Calls whose arguments are up to this size travel inline with the call instead of through the object store
# (a push is ~100-400 KB); Ray's workers read the variable from the environment when they start: set before
# ray.init() for a local Ray, in the image for a cluster.
INLINE_BYTES = 512 * 1024
INLINE_ENV = "RAY_max_direct_call_object_size"
ADDRESS_ENV = "RAY_ADDRESS"
USAGE_STATS_ENV = "RAY_USAGE_STATS_ENABLED"
# Ray wraps the "(WorkerActor pid=...)" prefix of forwarded actor output in colour codes unless this is 0
COLOR_ENV = "RAY_COLOR_PREFIX"
# A new local Ray turns token auth on by itself and warns that it did; saying so explicitly keeps it on, quietly.
# Read when ray is imported: set later, the driver and the Ray it starts would disagree on it.
AUTH_ENV = "RAY_AUTH_MODE"


class RayUnreachable(ConnectionError):
    """The cluster named by ``--ray-address`` could not be joined in time; the message says what to check."""


def loopback_ray() -> None:
    """Call before anything imports ray: a local Ray then listens on 127.0.0.1 only, with token auth on
    and no warning about it, and no colour codes in a redirected stderr (a user's settings win)."""
    os.environ.setdefault(LOOPBACK_ENV, "0")
    os.environ.setdefault(AUTH_ENV, "token")
    plain_output()


def plain_output(stream: Any = None) -> None:
    """No colour codes in Ray's forwarded actor output unless ``stream`` (stderr) is a terminal (a user's own
    setting wins)."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        os.environ.setdefault(COLOR_ENV, "0")


def inline_larger_calls() -> None:
    """Before starting a local Ray: pass calls of up to :data:`INLINE_BYTES` inline (a user's own setting
    of the variable wins)."""
    os.environ.setdefault(INLINE_ENV, str(INLINE_BYTES))


def cluster_file(env: Mapping[str, str]) -> Path:
    """Where ``ray start`` records the address of the cluster it started (Ray's own lookup for ``auto``)."""
    tmp = env.get("RAY_TMPDIR") or (env.get("TMPDIR") if sys.platform.startswith("linux") else None) or "/tmp"
    return Path(tmp) / "ray" / "ray_current_cluster"


def resolve(address: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The cluster to join: None for a local Ray of the job's own (no address given, whatever the
    environment says); ``auto`` becomes ``$RAY_ADDRESS``, else the address ``ray start`` recorded."""
    if not address or address == "local":
        return None
    if address != "auto":
        return address
    env = os.environ if env is None else env
    found = env.get(ADDRESS_ENV) or ""
    if not found:
        try:
            found = cluster_file(env).read_text().strip()
        except OSError:
            found = ""
    if not found or found == "auto":
        raise RayUnreachable("--ray-address auto: no Ray cluster found on this machine (neither $RAY_ADDRESS nor "
                             f"{cluster_file(env)} names one): start one with `ray start --head`, give its "
                             "address, or leave --ray-address out for a local Ray of the job's own")
    return found


def endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port``, ``ray://host:port`` or ``[v6]:port``; None if it names none."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def _unreachable(address: str, seconds: float, why: str) -> RayUnreachable:
    return RayUnreachable(f"--ray-address {address}: cannot join the Ray cluster within {seconds:g} s ({why}); "
                          f"check that it runs (`ray status --address {address}`), that this machine reaches "
                          f"that host and port, and that its Ray version matches this one ({version('ray')})")


def probe(address: str, seconds: float) -> None:
    """Raise RayUnreachable unless ``address``'s host accepts a TCP connection within ``seconds``."""
    where = endpoint(address)
    if where is None:
        raise RayUnreachable(f"--ray-address {address}: not an address (host:port, ray://host:port or auto)")
    try:
        with socket.create_connection(where, timeout=seconds):
            pass
    except OSError as exc:
        raise _unreachable(address, seconds, exc.strerror or type(exc).__name__) from exc


def _init_within(seconds: float, address: str, **kwargs: Any) -> None:
    """``ray.init(address=...)``, given up after ``seconds`` (Ray itself retries a silent cluster for minutes)."""
    import ray

    failure: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, **kwargs)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=init, name="ray-init", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise _unreachable(address, seconds, "no answer")
    if failure:
        raise _unreachable(address, seconds, str(failure[0]).splitlines()[0][:200]) from failure[0]


def start_ray(cfg: RayConfig) -> None:
    """Start a local Ray for this job, or join ``cfg.address``; nothing if Ray is already up in this process."""
    import ray

    if ray.is_initialized():
        return
    plain_output()
    address = resolve(cfg.address)
    if address is not None:
        probe(address, cfg.connect_seconds)
        _init_within(cfg.connect_seconds, address, logging_level=logging.WARNING, log_to_driver=True)
        return
    os.environ.pop(ADDRESS_ENV, None)  # Ray's processes would inherit it: this job's Ray is its own
    os.environ.setdefault(USAGE_STATS_ENV, "0")  # no usage reporting thread for a job's private Ray
    inline_larger_calls()
    ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=cfg.dashboard, dashboard_host="127.0.0.1",
             logging_level=logging.WARNING, configure_logging=True, log_to_driver=True)
    node = ray.util.get_node_ip_address()
    if not _is_loopback(node):
        log.warning("local Ray listens on %s, not only on loopback: set %s=0 before ray is imported (as "
                    "`streamlearn run` does)", node, LOOPBACK_ENV)


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
