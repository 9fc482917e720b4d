"""Run ``streamlearn ARGS...`` but keep its metrics endpoint up after the summary until stdin closes.

A job stops serving /metrics the moment it ends, so the last scrape of a
short run misses its final interval and the drain. To compare what
Prometheus scraped with the job's JSON summary *exactly*, the live tests run
the job through this script: it defers :meth:`Metrics.close` (the only
change; the job, its counters and its summary are the real ones), prints the
summary as usual, waits for EOF on stdin (the test has scraped the final
values by then), then closes the endpoint and exits with the command's code.
"""

from __future__ import annotations

import sys

from streamlearn import cli
from streamlearn.metrics import Metrics


def main(argv: list[str]) -> int:
    deferred: list[Metrics] = []
    close = Metrics.close
    Metrics.close = lambda self: deferred.append(self)  # type: ignore[method-assign]
    try:
        code = cli.main(argv)
        print(f"linger: {argv[0]} exited {code}; endpoint open until stdin closes", file=sys.stderr, flush=True)
        sys.stdin.read()
    finally:
        for m in deferred:
            close(m)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
