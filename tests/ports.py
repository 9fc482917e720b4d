"""Loopback ports for the servers tests start."""

import socket

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one this process handed out before.

    A port is free again once its probe socket closes, so two calls in a row
    (a demo's metrics port, then Prometheus's) could return the same one and
    the second server to bind it would fail (it happened once in CI).
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
