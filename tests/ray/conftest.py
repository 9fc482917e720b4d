"""One local Ray cluster for the whole Ray tier (no __init__.py here: it would shadow the ray package)."""

import os

import pytest
import ray


@pytest.fixture(scope="session")
def ray_cluster():
    from streamlearn.cluster import inline_larger_calls

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only test cluster
    inline_larger_calls()  # as a job's local Ray does
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING", configure_logging=True)
    yield
    ray.shutdown()
