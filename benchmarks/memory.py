"""Memory of a whole local job: peak summed RSS of `streamlearn demo` by role, and the cost of one more worker.

Runs ``streamlearn demo --workers N`` and then ``--workers N+1`` (each in a
fresh process, so each starts its own local Ray), samples the RSS of every
process the run owns and prints one JSON document:

* ``driver`` -- the ``streamlearn demo`` process (it also holds the embedded stream);
* ``workers`` / ``servers`` -- the ``ray::WorkerActor`` / ``ray::ParamServerActor`` processes;
* ``ray_system`` -- everything else Ray started for the run: GCS, raylet, dashboard and its agents,
  log monitor, idle workers (``ray::IDLE``).

A process belongs to the run when it descends from the demo process, or its
command line names the run's own Ray temp dir (``RAY_TMPDIR`` is set to a fresh
directory, so daemonised Ray processes are found and other jobs' Ray
processes on the machine are not), or it descends from such a process.
``peak_mb`` is the peak of the summed RSS over all of them (what the issue's
memory targets are about), ``peak_by_role_mb`` each role's own peak sum,
``at_peak_mb`` the roles at the moment of the overall peak, ``processes``
each process's own peak. An actor starts in a pooled ``ray::IDLE`` process
and retitles itself when built, so a process ever titled as an actor counts
as that actor for the whole run. Summed RSS counts a shared library's pages
in every process that maps it, so it overstates what the machine gives up a
little. ``extra_worker_mb`` = peak(N+1) - peak(N).

Both runs get the same ``--partitions`` (at least N+1; a worker without a
partition is not started). Arguments after ``--`` go to ``streamlearn demo``.

    python benchmarks/memory.py                               # demo --workers 2, then 3
    python benchmarks/memory.py --workers 1 --model hashed
    python benchmarks/memory.py --out - -- --events 50000     # print only; a longer stream

Writes benchmarks/results/memory.json unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ROLES = ("driver", "workers", "servers", "ray_system")
SUMMARY_KEYS = ("events_consumed", "examples_positive", "examples_negative", "progressive_accuracy", "stop_reason")


def mb(n: float) -> float:
    return round(n / (1 << 20), 1)


def title(proc: psutil.Process) -> str:
    """The process's command line as Ray leaves it (actors retitle themselves ``ray::<Class>``)."""
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return ""


def role(t: str) -> str:
    """A Ray process's role by its title; the driver is known by pid."""
    if t.startswith("ray::WorkerActor"):
        return "workers"
    if t.startswith("ray::ParamServer"):
        return "servers"
    return "ray_system"


def kind(t: str) -> str:
    """A short name for the per-process table: the Ray title, or the script or executable's base name."""
    if t.startswith("ray::"):
        return t.split()[0].split(".")[0]
    args = t.split()
    if not args:
        return "?"
    if Path(args[0]).name.startswith("python"):  # python [-u] path/to/x.py: the script names the process
        return next((Path(a).name for a in args[1:] if a.endswith(".py")), "python")
    return Path(args[0]).name


class Sampler:
    """Summed RSS of a run's processes, by role, sampled every ``every`` s; the set is rescanned each
    ``rescan`` s (listing processes reads /proc, which costs the CPU the job is using).

    Ray starts an actor in a pooled worker process (``ray::IDLE``) that retitles itself once the actor is
    built, so roles are assigned per process at the end: a process ever titled as an actor counts as that
    actor for the whole run, including while it was loading.
    """

    def __init__(self, driver_pid: int, tmp: str, since: float, every: float = 0.2, rescan: float = 1.0) -> None:
        self.driver_pid, self.tmp, self.since = driver_pid, tmp, since
        self.every, self.rescan = every, rescan
        self.procs: dict[int, psutil.Process] = {}
        self.roles: dict[int, str] = {driver_pid: "driver"}
        self.kinds: dict[int, str] = {driver_pid: "streamlearn demo"}
        self.samples: list[dict[int, int]] = []  # pid -> RSS, one dict per sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._scanned = -1e9

    def _scan(self) -> None:
        roots: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            roots.append(psutil.Process(self.driver_pid))
        for p in psutil.process_iter(["create_time"]):
            if p.info["create_time"] is None or p.info["create_time"] < self.since or p.pid == self.driver_pid:
                continue
            if self.tmp in title(p):
                roots.append(p)
        for r in roots:
            self.procs.setdefault(r.pid, r)  # keep the first Process object: it guards against pid reuse
            with contextlib.suppress(psutil.Error):
                for c in r.children(recursive=True):
                    self.procs.setdefault(c.pid, c)

    def _note(self, pid: int, proc: psutil.Process) -> None:
        if pid == self.driver_pid:
            return
        t = title(proc)
        r = role(t)
        if r != "ray_system" or pid not in self.roles:  # an actor's title wins over what it was before
            self.roles[pid] = r
        if pid not in self.kinds or (t.startswith("ray::") and not t.startswith("ray::IDLE")):
            self.kinds[pid] = kind(t)  # Ray's processes retitle themselves once they know what they are

    def sample(self) -> None:
        if time.monotonic() - self._scanned > self.rescan:
            self._scanned = time.monotonic()
            self._scan()
        rss: dict[int, int] = {}
        for pid, p in list(self.procs.items()):
            try:
                if not p.is_running():
                    del self.procs[pid]
                    continue
                rss[pid] = p.memory_info().rss
                self._note(pid, p)
            except psutil.Error:
                self.procs.pop(pid, None)
        self.samples.append(rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, Any]:
        """Peak of the summed RSS, each role's peak sum, the roles at the overall peak, and every process."""
        peak, at_peak = 0, dict.fromkeys(ROLES, 0)
        peak_by_role = dict.fromkeys(ROLES, 0)
        for rss in self.samples:
            by_role = dict.fromkeys(ROLES, 0)
            for pid, v in rss.items():
                by_role[self.roles.get(pid, "ray_system")] += v
            for r in ROLES:
                peak_by_role[r] = max(peak_by_role[r], by_role[r])
            if sum(by_role.values()) > peak:
                peak, at_peak = sum(by_role.values()), by_role
        most: dict[int, int] = {}
        for rss in self.samples:
            for pid, v in rss.items():
                most[pid] = max(most.get(pid, 0), v)
        order = sorted((pid for pid in most if most[pid] > 0),
                       key=lambda pid: (ROLES.index(self.roles.get(pid, "ray_system")), -most[pid]))
        processes = [{"role": self.roles.get(pid, "ray_system"), "kind": self.kinds.get(pid, "?"),
                      "peak_mb": mb(most[pid])} for pid in order]
        return {"samples": len(self.samples), "peak_mb": mb(peak),
                "peak_by_role_mb": {r: mb(v) for r, v in peak_by_role.items()},
                "at_peak_mb": {r: mb(v) for r, v in at_peak.items()},
                "processes": processes}


def demo_command(workers: int, model: str, partitions: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "streamlearn.cli", "demo", "--workers", str(workers), "--model", model,
            "--partitions", str(partitions), *extra]


def run_once(workers: int, model: str, partitions: int, extra: list[str], timeout: float) -> dict[str, Any]:
    """One ``streamlearn demo`` in a fresh process with its own Ray temp dir; its memory by role."""
    cmd = demo_command(workers, model, partitions, extra)
    # a short path: Ray puts unix sockets under it, and their paths are limited to ~107 bytes
    tmp = tempfile.mkdtemp(prefix="slmem", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": tmp, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}  # actors import this checkout too
    env.pop("RAY_ADDRESS", None)  # a local Ray of the run's own, never a cluster the shell points at
    since = time.time() - 1.0
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with Sampler(proc.pid, tmp, since) as s:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: the job drains, checkpoints and exits
            out, err = proc.communicate(timeout=60)
    seconds = time.monotonic() - t0
    shutil.rmtree(tmp, ignore_errors=True)  # Ray's session logs of this run
    summary: dict[str, Any] = {}
    lines = out.strip().splitlines()
    if lines:
        try:
            summary = json.loads(lines[-1])
        except json.JSONDecodeError:
            summary = {}
    row: dict[str, Any] = {"workers": workers, "partitions": partitions, "exit_code": proc.returncode,
                           "seconds": round(seconds, 1), **s.report(),
                           "summary": {k: summary[k] for k in SUMMARY_KEYS if k in summary}}
    if proc.returncode != 0:
        row["stderr_tail"] = err.strip().splitlines()[-5:]
    return row


def commit() -> str:
    """The measured checkout's commit, with ``+dirty`` when its tracked files differ from it."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "streamlearn") else "")


def machine() -> dict[str, Any]:
    return {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / (1 << 30), 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="N: workers of the first run; the second runs N+1")
    ap.add_argument("--model", default="linear", help="streamlearn demo --model")
    ap.add_argument("--partitions", type=int, default=None, help="embedded stream partitions (default max(2, N+1))")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is sent SIGTERM")
    ap.add_argument("--label", default="", help="a note stored with the result (e.g. before, after)")
    ap.add_argument("--out", default=str(RESULTS / "memory.json"), help="JSON file to write ('-': print only)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    n = args.workers
    partitions = args.partitions or max(2, n + 1)
    runs = [run_once(w, args.model, partitions, extra, args.timeout) for w in (n, n + 1)]
    a, b = runs
    doc = {
        "bench": "memory",
        "label": args.label,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": machine(),
        "command": shlex.join(["python", "benchmarks/memory.py", *argv, *(["--", *extra] if extra else [])]),
        "demo": " ".join(["streamlearn", *demo_command(n, args.model, partitions, extra)[3:]]),
        "model": args.model,
        "runs": runs,
        "peak_mb": a["peak_mb"],
        "peak_by_role_mb": a["peak_by_role_mb"],
        "extra_worker_mb": round(b["peak_mb"] - a["peak_mb"], 1),
        "extra_worker_actors_mb": round(b["peak_by_role_mb"]["workers"] - a["peak_by_role_mb"]["workers"], 1),
        "ok": all(r["exit_code"] == 0 for r in runs),
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
