"""The metrics history (`--metrics-history`): a short run records enough rows for `report` to draw a curve, a
long one a row per interval; driven by a clock of the test's own, so no test waits."""

import itertools
import json
from pathlib import Path

from streamlearn.cli import main
from streamlearn.metrics import HistoryCadence, Metrics, MetricsConfig
from streamlearn.worker import StepResult


class Clock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def run(path: Path, seconds: float, step: float, every: float = MetricsConfig.history_every_seconds) -> list[dict]:
    """A job loop's ticks every ``step`` seconds for ``seconds``, then the close of the job."""
    clock = Clock()
    metrics = Metrics(clock=clock)
    for _ in range(round(seconds / step)):
        metrics.observe(StepResult(worker=0, records=100))
        metrics.tick(str(path), every)
        clock.now += step
    metrics.close()
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_two_second_run_records_enough_rows_to_draw(tmp_path: Path, capsys) -> None:
    rows = run(tmp_path / "h.jsonl", seconds=2.0, step=0.01)
    assert len(rows) >= 15
    times = [r["time"] for r in rows]
    assert times == sorted(times) and times[-1] - times[0] >= 1.9  # the rows span the run
    out = tmp_path / "h.png"
    assert main(["report", "--history", str(tmp_path / "h.jsonl"), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["rows"] == len(rows)


def test_an_old_run_samples_at_the_configured_interval() -> None:
    clock = Clock()
    cadence = HistoryCadence(2.0, clock)
    due = []
    for _ in range(3600 * 20):  # an hour of ticks 50 ms apart
        if cadence.due():
            due.append(clock.now)
        clock.now += 0.05
    late = [b - a for a, b in itertools.pairwise(due) if a - due[0] > 600]
    assert late and all(abs(gap - 2.0) < 0.06 for gap in late)
    assert len(due) < 3600 / 2.0 + 300  # the young run's extra rows are a few hundred at most


def test_a_shorter_interval_wins_over_the_young_run_rule() -> None:
    clock = Clock()
    cadence = HistoryCadence(0.05, clock)
    hits = 0
    for _ in range(100):
        hits += cadence.due()
        clock.now += 0.05
    assert hits == 100



def test_the_interval_has_a_flag(monkeypatch, tmp_path: Path) -> None:
    from streamlearn import cli

    got = {}
    monkeypatch.setattr(cli, "_run_job", lambda cfg, name: got.setdefault("cfg", cfg) and {"stop_reason": "test"})
    monkeypatch.delenv("STREAMLEARN_METRICS_HISTORY_EVERY_SECONDS", raising=False)
    assert main(["demo", "--metrics-history", str(tmp_path / "h.jsonl"), "--metrics-history-every-seconds", "0.5"]) == 0
    assert got["cfg"].metrics.history_every_seconds == 0.5
    assert main(["demo", "--metrics-history-every-seconds", "0"]) == 2  # must be > 0
