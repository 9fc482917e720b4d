"""Fixtures of the prometheus tier: ``prometheus(targets)`` starts a real server (see promserver.py).

Every server a module started is stopped when the module ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from tests.prometheus.promserver import Prometheus, start_prometheus


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Sequence[str]], Prometheus]]:
    """Factory: ``prometheus(["127.0.0.1:PORT"])`` -> a ready server scraping those targets."""
    started: list[Prometheus] = []

    def start(targets: Sequence[str]) -> Prometheus:
        server = start_prometheus(targets, tmp_path_factory.mktemp("prometheus"))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
