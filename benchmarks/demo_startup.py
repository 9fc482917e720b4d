"""How long ``streamlearn demo`` takes from the command's start to its first consumed event; prints JSON.

The first event is the first scrape of the job's metrics endpoint that counts a consumed record, so the number
includes interpreter start, imports, config, Ray's start, the actors' construction and the first poll.
Indicative only on a shared machine: run it with ``--runs 3`` or more and read the median.

    python benchmarks/demo_startup.py --runs 3 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

CONSUMED = re.compile(r'^streamlearn_events_total\{[^}]*outcome="consumed"[^}]*\} ([0-9.e+]+)$', re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def consumed(port: int) -> float | None:
    """Records consumed so far by the job's endpoint, or None while it is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return None
    return sum(float(v) for v in CONSUMED.findall(text))


def one_run(workers: int, events: int, timeout: float) -> dict[str, float | None]:
    port = free_port()
    cmd = [sys.executable, "-m", "streamlearn.cli", "demo", "--workers", str(workers), "--events", str(events),
           "--metrics-port", str(port)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    endpoint = first = None
    try:
        while proc.poll() is None and time.perf_counter() - start < timeout:
            n = consumed(port)
            now = time.perf_counter() - start
            if n is not None and endpoint is None:
                endpoint = now
            if n:
                first = now
                break
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    total = time.perf_counter() - start
    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {"metrics_endpoint_seconds": None if endpoint is None else round(endpoint, 2),
            "first_event_seconds": None if first is None else round(first, 2),
            "total_seconds": round(total, 2), "job_seconds": summary.get("seconds"),
            "exit_code": proc.returncode}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a run is abandoned")
    args = p.parse_args()
    runs = [one_run(args.workers, args.events, args.timeout) for _ in range(args.runs)]
    firsts = [r["first_event_seconds"] for r in runs if r["first_event_seconds"] is not None]
    print(json.dumps({"benchmark": "demo_startup", "workers": args.workers, "events": args.events,
                      "cpus": os.cpu_count(), "runs": runs,
                      "first_event_seconds_median": round(statistics.median(firsts), 2) if firsts else None}))


if __name__ == "__main__":
    main()
