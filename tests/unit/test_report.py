"""`streamlearn report`: a PNG of a run from a synthetic metrics history; bad input is one error line, exit 2."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from streamlearn.cli import main
from streamlearn.report import DPI, FIGSIZE, parse_key, rate, read_history

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which a valid PNG has first."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, "not a PNG"
    assert head[12:16] == b"IHDR", "PNG without IHDR first"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def synthetic_rows(n: int = 30) -> list[dict]:
    """A run: accuracy rises, loss falls, one norm-growth signal and a rollback at row 20."""
    rows = []
    for i in range(n):
        row = {
            "time": 1000.0 + 2.0 * i,
            "streamlearn_events_total{outcome=consumed,topic=predictions}": 500.0 * i,
            "streamlearn_events_total{outcome=consumed,topic=feedback}": 450.0 * i,
            "streamlearn_events_total{outcome=joined,topic=all}": 450.0 * i,
            "streamlearn_examples_total{polarity=positive}": 45.0 * i,
            "streamlearn_examples_total{polarity=negative}": 405.0 * i,
            "streamlearn_prediction_kl": 0.1 * i,
            "streamlearn_weight_norm": 3.0 * math.sqrt(i),
            "streamlearn_diverging": 1.0 if 20 <= i < 23 else 0.0,
            "streamlearn_rollbacks_total": 1.0 if i >= 20 else 0.0,
        }
        if i:  # labelled gauges appear with the first learned example
            row["streamlearn_loss{polarity=positive}"] = 2.0 / (1 + i)
            row["streamlearn_loss{polarity=negative}"] = 0.2 / (1 + i)
            row["streamlearn_progressive_accuracy{polarity=positive}"] = 1 - 0.9 / (1 + 0.3 * i)
            row["streamlearn_progressive_accuracy{polarity=negative}"] = 0.99
        if i >= 20:
            row["streamlearn_divergence_events_total{kind=norm_growth}"] = 1.0
        rows.append(row)
    return rows


def write_history(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_parse_key() -> None:
    assert parse_key("streamlearn_updates_total") == ("streamlearn_updates_total", {})
    assert parse_key("streamlearn_events_total{outcome=consumed,topic=feedback}") == (
        "streamlearn_events_total", {"outcome": "consumed", "topic": "feedback"})


def test_rate_of_a_counter() -> None:
    got = rate([0.0, 2.0, 4.0, 6.0], [math.nan, 100.0, 300.0, 50.0])
    assert math.isnan(got[0])
    assert got[1:] == [50.0, 100.0, 25.0]  # from an absent counter: from 0; after a reset: from 0


def test_report_writes_a_png_of_the_expected_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = write_history(tmp_path / "history.jsonl", synthetic_rows())
    out = tmp_path / "report.png"
    assert main(["report", "--history", str(history), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["out"] == str(out) and summary["rows"] == 30
    assert summary["events_consumed"] == 950 * 29
    assert summary["divergence_events"] == {"norm_growth": 1} and summary["rollbacks"] == 1
    assert png_size(out) == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI)) == tuple(summary["size"])
    assert out.stat().st_size > 20_000  # six panels with content, not a blank canvas


def test_report_of_a_single_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run stopped at once has one snapshot: no rate, no lines, still a valid report."""
    history = write_history(tmp_path / "one.jsonl", synthetic_rows(1))
    out = tmp_path / "one.png"
    assert main(["report", "--history", str(history), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["rows"] == 1
    assert png_size(out)[0] > 0


def test_rows_are_read_in_time_order_and_blank_lines_skipped(tmp_path: Path) -> None:
    rows = synthetic_rows(3)
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(rows[2]) + "\n\n" + json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n")
    assert [r["time"] for r in read_history(str(path))] == [1000.0, 1002.0, 1004.0]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "cannot read"),
        ("", "has no rows"),
        ("\n  \n", "has no rows"),
        ('{"time": 1.0}\n{"time": 2.0, "streamlearn_loss\n', "line 2: not JSON"),
        ("[1, 2]\n", "line 1: not a snapshot"),
        ('{"streamlearn_workers": 1}\n', "line 1: not a snapshot"),
    ],
    ids=["missing", "empty", "blank", "not-json", "not-object", "no-time"],
)
def test_bad_history_is_one_error_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              content: str | None, needle: str) -> None:
    path = tmp_path / "history.jsonl"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "report.png"
    assert main(["report", "--history", str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("streamlearn: error: --history") and needle in err[0], err
    assert captured.out == "" and not out.exists()


def test_out_in_a_missing_directory_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = write_history(tmp_path / "history.jsonl", synthetic_rows(3))
    assert main(["report", "--history", str(history), "--out", str(tmp_path / "nope" / "r.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0]


def test_out_that_is_a_directory_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = write_history(tmp_path / "history.jsonl", synthetic_rows(3))
    assert main(["report", "--history", str(history), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("streamlearn: error: --out") and "is a directory" in err[0], err
