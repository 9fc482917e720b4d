"""``streamlearn report``: one PNG of a run from its metrics history.

The history file (``--metrics-history``) holds JSON lines of
:meth:`streamlearn.metrics.Metrics.snapshot` rows,
``{"time": t, "name{label=v,...}": value, ...}``. Each row is one moment of
the job. The report draws six panels over seconds since the first row:
loss and progressive accuracy by polarity, prediction KL, weight norm,
divergence (the ``streamlearn_diverging`` state with a marker where
``streamlearn_divergence_events_total`` rose) and throughput (the rate of
consumed events between rows).

Rendering uses matplotlib's Agg canvas directly (no pyplot, no global
backend), so it runs headless and leaves no state behind.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FIGSIZE = (13.0, 10.0)  # inches; the PNG is FIGSIZE * DPI pixels
DPI = 100
POLARITIES = ("positive", "negative")
KIND_COLORS = {"non_finite": "tab:purple", "loss_spike": "tab:orange", "norm_growth": "tab:red"}


@dataclass(frozen=True)
class Series:
    """One sample's values over the rows: NaN where a row lacks it."""

    name: str
    labels: dict[str, str]
    values: list[float]


def parse_key(key: str) -> tuple[str, dict[str, str]]:
    """``name{a=1,b=2}`` -> (name, {a: 1, b: 2}); labels are low-cardinality and never hold ``,`` or ``=``."""
    name, brace, rest = key.partition("{")
    if not brace:
        return key, {}
    labels = {}
    for pair in rest.rstrip("}").split(","):
        k, _, v = pair.partition("=")
        if k:
            labels[k] = v
    return name, labels


def read_history(path: str) -> list[dict[str, Any]]:
    """The rows of a history file, oldest first; a ValueError names what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ValueError(f"--history: cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"--history: {path} is not UTF-8 text ({exc.reason})") from exc
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--history: {path} line {number}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("time"), int | float):
            raise ValueError(f"--history: {path} line {number}: not a snapshot (an object with a numeric "
                             f"\"time\")")
        rows.append(row)
    if not rows:
        raise ValueError(f"--history: {path} has no rows (run a job with --metrics-history {path})")
    rows.sort(key=lambda r: r["time"])
    return rows


def series(rows: Sequence[dict[str, Any]], name: str) -> list[Series]:
    """Every sample of metric ``name`` across the rows, one Series per label set."""
    keys: dict[str, dict[str, str]] = {}
    for row in rows:
        for key in row:
            if key not in keys:
                base, labels = parse_key(key)
                if base == name:
                    keys[key] = labels
    return [Series(name, labels, [_num(row.get(key)) for row in rows]) for key, labels in keys.items()]


def total(rows: Sequence[dict[str, Any]], name: str, **match: str) -> list[float]:
    """Sum over the samples of ``name`` whose labels include ``match``, per row (NaN if none present)."""
    parts = [s.values for s in series(rows, name) if all(s.labels.get(k) == v for k, v in match.items())]
    out = []
    for i in range(len(rows)):
        present = [p[i] for p in parts if not math.isnan(p[i])]
        out.append(sum(present) if present else math.nan)
    return out


def rate(times: Sequence[float], counter: Sequence[float]) -> list[float]:
    """Per-second increase between consecutive rows (at the later row); a counter reset restarts from 0."""
    out = [math.nan]
    for i in range(1, len(times)):
        dt = times[i] - times[i - 1]
        a, b = counter[i - 1], counter[i]
        if dt <= 0 or math.isnan(b):
            out.append(math.nan)
            continue
        a = 0.0 if math.isnan(a) else a
        out.append((b - a if b >= a else b) / dt)
    return out


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def _rises(values: Sequence[float]) -> list[tuple[int, float]]:
    """(index, increase) where a counter went up since the previous row that had it."""
    out, last = [], 0.0
    for i, v in enumerate(values):
        if math.isnan(v):
            continue
        if v > last:
            out.append((i, v - last))
        last = v
    return out


def render(rows: Sequence[dict[str, Any]], out: str) -> dict[str, Any]:
    """Draw the report to ``out`` (PNG); returns the summary printed by the CLI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_out(out)
    t0 = rows[0]["time"]
    t = [r["time"] - t0 for r in rows]
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 2, sharex=True)
    title = f"streamlearn run: {len(rows)} snapshots over {t[-1]:.1f} s"
    if len(rows) < 5:
        title += "\n(few snapshots: a job writes one every metrics.history_every_seconds and one at its end)"
    fig.suptitle(title, fontsize=13)
    # unlabelled gauges read 0 until the first step: blank them before any example was learned
    learned = [not math.isnan(v) and v > 0 for v in total(rows, "streamlearn_examples_total")]

    def by_polarity(ax: Any, name: str, title: str, ylabel: str, log: bool = False, low: str = "") -> None:
        drawn = False
        for s in sorted(series(rows, name), key=lambda s: s.labels.get("polarity", "")):
            pol = s.labels.get("polarity", "?")
            color = "tab:blue" if pol == "positive" else "tab:orange"
            ax.plot(t, s.values, marker=".", label=pol, color=color)
            _label_last(ax, t, s.values, color, below=pol == low)
            drawn = drawn or any(not math.isnan(v) for v in s.values)
        if log and drawn and all(v > 0 for s in series(rows, name) for v in s.values if not math.isnan(v)):
            ax.set_yscale("log")
        _finish(ax, title, ylabel, drawn)

    by_polarity(axes[0][0], "streamlearn_loss", "Recent mean loss by polarity", "nats / example", log=True)
    by_polarity(axes[0][1], "streamlearn_progressive_accuracy", "Progressive accuracy by polarity",
                "share (negatives: wrong label avoided)", low="positive")
    axes[0][1].set_ylim(-0.02, 1.1)

    kl = [v if ok else math.nan for v, ok in zip(total(rows, "streamlearn_prediction_kl"), learned, strict=True)]
    axes[1][0].plot(t, kl, marker=".", color="tab:green")
    _label_last(axes[1][0], t, kl, "tab:green")
    _finish(axes[1][0], "Prediction KL (serving || current)", "nats", _has(kl))

    norm = [v if ok else math.nan for v, ok in zip(total(rows, "streamlearn_weight_norm"), learned, strict=True)]
    axes[1][1].plot(t, norm, marker=".", color="tab:brown")
    _label_last(axes[1][1], t, norm, "tab:brown")
    _finish(axes[1][1], "Weight norm", "L2 norm", _has(norm))

    ax = axes[2][0]
    diverging = total(rows, "streamlearn_diverging")
    ax.step(t, [0.0 if math.isnan(v) else v for v in diverging], where="post", color="black", lw=1)
    ax.fill_between(t, [0.0 if math.isnan(v) else v for v in diverging], step="post", color="tab:red",
                    alpha=0.25, label="diverging")
    events: dict[str, int] = {}
    for s in series(rows, "streamlearn_divergence_events_total"):
        kind = s.labels.get("kind", "?")
        marks = _rises(s.values)
        events[kind] = int(max((v for v in s.values if not math.isnan(v)), default=0))
        color = KIND_COLORS.get(kind, "tab:gray")
        for j, (i, n) in enumerate(marks):
            ax.axvline(t[i], color=color, ls="--", lw=1.2, label=kind if j == 0 else None)
            if n > 1:  # several signals between two snapshots share one marker
                ax.annotate(f"x{n:.0f}", (t[i], 0.5), xytext=(3, 0), textcoords="offset points", color=color,
                            fontsize=9, rotation=90, va="center")
    rollbacks = total(rows, "streamlearn_rollbacks_total")
    for j, (i, _) in enumerate(_rises(rollbacks)):
        ax.plot([t[i]], [1.05], marker="v", color="tab:red", ls="none", label="rollback" if j == 0 else None)
    ax.set_ylim(-0.05, 1.2)
    ax.set_yticks([0, 1], ["healthy", "diverging"])
    _finish(ax, "Divergence: state and signals (dashed: a signal fired)", "", True)

    consumed = total(rows, "streamlearn_events_total", outcome="consumed")
    throughput = rate(t, consumed)
    axes[2][1].plot(t, throughput, marker=".", color="tab:purple")
    _label_last(axes[2][1], t, throughput, "tab:purple", "{:.0f}")
    _finish(axes[2][1], "Throughput: events consumed", "events / s", _has(throughput))
    top = max((v for v in throughput if not math.isnan(v)), default=0.0)
    axes[2][1].set_ylim(0, top * 1.2 if top > 0 else 1.0)

    for ax in axes[2]:
        ax.set_xlabel("seconds since the first snapshot")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(out, format="png")
    last = [v for v in consumed if not math.isnan(v)]
    return {
        "out": out,
        "rows": len(rows),
        "seconds": round(t[-1], 3),
        "events_consumed": int(last[-1]) if last else 0,
        "divergence_events": events,
        "rollbacks": int(max((v for v in rollbacks if not math.isnan(v)), default=0)),
        "size": [int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI)],
    }


def _label_last(ax: Any, t: Sequence[float], values: Sequence[float], color: str, fmt: str = "{:.3g}",
                below: bool = False) -> None:
    """Write the last finite value next to its point, so a reader gets the final number without a ruler."""
    for x, v in zip(reversed(t), reversed(values), strict=True):
        if not math.isnan(v):
            ax.annotate(fmt.format(v), (x, v), xytext=(-5, -5 if below else 5), textcoords="offset points",
                        color=color, fontsize=9, ha="right" if x > 0 else "left", va="top" if below else "bottom")
            return


def _has(values: Sequence[float]) -> bool:
    return any(not math.isnan(v) for v in values)


def _finish(ax: Any, title: str, ylabel: str, drawn: bool) -> None:
    ax.set_title(title, fontsize=11)
    ax.margins(x=0.03, y=0.15)  # room for the last-value labels
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "no data in this history", transform=ax.transAxes, ha="center", va="center",
                color="gray")
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=9)


def report(history: str, out: str) -> dict[str, Any]:
    """Read ``history`` and write the PNG ``out``; the summary names the file and the rows read."""
    return render(read_history(history), out)


def check_out(out: str) -> None:
    """Fail before drawing if ``out`` cannot be a new or replaced file."""
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise ValueError(f"--out: {out} is a directory; give the PNG file's path (e.g. {os.path.join(out, 'run.png')})")
    if not os.path.isdir(parent):
        raise ValueError(f"--out: directory {parent} does not exist")
    if not os.access(out if os.path.exists(out) else parent, os.W_OK):
        raise ValueError(f"--out: cannot write {out} (permission denied)")
