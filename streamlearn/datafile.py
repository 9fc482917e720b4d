"""A user's file of features and labels as prediction and feedback events (``streamlearn produce --from``).

One example per row of a CSV file (with a header row) or a JSON-lines file (one object per line):

* features: the ``features`` columns (default: every column but the label, id and prediction columns), as a dense
  list in column order, or with ``named`` as an object column -> value (for ``--model hashed``). A JSON row may
  instead hold one feature column whose value is already a list (dense) or an object (named);
* label: the ``label`` column, a class index (``3``) or a class name (``setosa``);
* id: the ``id_column``, else ``<file stem>-<line number>`` (so producing a file twice repeats its ids, and the
  join counts the second copy as duplicates instead of learning it twice);
* prediction: the ``prediction_column`` (what the deployed model answered), else the label itself.

Each row becomes the contract's prediction ``{"id", "ts", "features", "prediction"}`` and feedback
``{"id", "ts", "label"}`` (see :mod:`streamlearn.codec`), both stamped ``ts``. A row that cannot (a missing or
empty column, a feature that is not a finite number, a dense row of another width, a repeated id) is a
:class:`BadRow` with its line number, never dropped in silence.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamlearn.events import F32_MAX

FORMATS = ("csv", "jsonl")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


class FileError(ValueError):
    """The file as a whole cannot be read as examples (unknown format, no label column); names the flag."""


@dataclass(frozen=True)
class FileSpec:
    path: str
    format: str | None = None  # csv | jsonl; None: from the extension
    features: tuple[str, ...] | None = None  # None: every other column
    label: str = "label"
    id_column: str | None = None  # None: <file stem>-<line>
    prediction_column: str | None = None  # None: the label stands in for the deployed model's answer
    named: bool = False  # features as {column: value} instead of a list
    ts: float = 0.0  # event time of every event, seconds

    def file_format(self) -> str:
        if self.format is not None:
            if self.format not in FORMATS:
                raise FileError(f"--format: unknown {self.format!r}, choose one of {', '.join(FORMATS)}")
            return self.format
        found = _EXTENSIONS.get(Path(self.path).suffix.lower())
        if found is None:
            raise FileError(f"--from: cannot tell the format of {self.path} from its extension; "
                            f"give --format {'|'.join(FORMATS)}")
        return found


@dataclass(frozen=True)
class Row:
    """One example as its two events, in the JSON contract's form."""

    line: int
    id: str
    prediction: dict[str, Any]
    feedback: dict[str, Any]


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str


@dataclass
class _State:
    """What a pass has seen: the dense width of the first good row, and the ids so far (line of each)."""

    width: int | None = None
    ids: dict[str, int] = field(default_factory=dict)


def _number(name: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"feature {name!r} is not a number: {value[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"feature {name!r} is not a number: {value!r}")
    if not math.isfinite(value) or abs(value) > F32_MAX:
        raise ValueError(f"feature {name!r} is not a finite float32: {value!r}")
    return float(value)


def _class(column: str, value: Any) -> int | str:
    """A class index or name as the contract takes it: digits in a CSV cell are an index."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError(f"column {column!r} is empty")
        return int(text) if text.isdigit() else text
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"column {column!r} must be a class index (0, 1, ...) or a class name, got {value!r}")


def _features(spec: FileSpec, row: Mapping[str, Any], columns: tuple[str, ...], state: _State) -> Any:
    if len(columns) == 1 and isinstance(row.get(columns[0]), list | dict):  # a JSON row's ready-made vector
        value = row[columns[0]]
        if isinstance(value, dict):
            return {str(k): _number(str(k), v) for k, v in value.items()}
        dense = [_number(f"{columns[0]}[{i}]", v) for i, v in enumerate(value)]
    else:
        missing = [c for c in columns if row.get(c) is None or row.get(c) == ""]
        if missing:
            raise ValueError(f"feature column {missing[0]!r} is missing or empty")
        if spec.named:
            return {c: _number(c, row[c]) for c in columns}
        dense = [_number(c, row[c]) for c in columns]
    if not dense:
        raise ValueError("no features")
    if state.width is None:
        state.width = len(dense)
    elif len(dense) != state.width:
        raise ValueError(f"{len(dense)} features, the rows before had {state.width}")
    return dense


def _row(spec: FileSpec, line: int, row: Mapping[str, Any], columns: tuple[str, ...], state: _State) -> Row:
    if spec.label not in row:
        raise ValueError(f"no label column {spec.label!r}")
    label = _class(spec.label, row[spec.label])
    prediction = label if spec.prediction_column is None else _class(spec.prediction_column,
                                                                      row.get(spec.prediction_column, ""))
    features = _features(spec, row, columns, state)
    if spec.id_column is None:
        ident = f"{Path(spec.path).stem}-{line}"
    else:
        raw = row.get(spec.id_column)
        ident = str(raw).strip() if raw is not None and not isinstance(raw, dict | list) else ""
        if not ident:
            raise ValueError(f"id column {spec.id_column!r} is missing or empty")
        first = state.ids.setdefault(ident, line)
        if first != line:
            raise ValueError(f"id {ident!r} repeats line {first}")
    return Row(line, ident, {"id": ident, "ts": spec.ts, "features": features, "prediction": prediction},
               {"id": ident, "ts": spec.ts, "label": label})


def _records(spec: FileSpec, fmt: str) -> Iterator[tuple[int, Mapping[str, Any] | str]]:
    """(line number, the row's columns), or (line number, why the line is no row)."""
    with open(spec.path, encoding="utf-8", newline="") as f:
        if fmt == "csv":
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise FileError(f"--from: {spec.path} has no header row")
            for record in reader:
                if None in record:
                    yield reader.line_num, f"{len(record) - 1 + len(record[None])} cells, the header has " \
                                           f"{len(reader.fieldnames)}"
                elif any(v is None for v in record.values()):
                    yield reader.line_num, f"fewer cells than the header's {len(reader.fieldnames)}"
                else:
                    yield reader.line_num, record
            return
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, f"not JSON ({exc.msg})"
                continue
            yield number, value if isinstance(value, dict) else "not a JSON object"


def read_rows(spec: FileSpec) -> Iterator[Row | BadRow]:
    """Every row of the file in order: a :class:`Row`, or a :class:`BadRow` saying why not.
    Raises :class:`FileError` for a file that holds no rows of this shape, OSError if it cannot be read."""
    fmt = spec.file_format()
    state = _State()
    columns = spec.features
    taken = {spec.label, spec.id_column, spec.prediction_column}
    try:
        for line, record in _records(spec, fmt):
            if isinstance(record, str):
                yield BadRow(line, record)
                continue
            if columns is None:  # every other column of the first row
                columns = tuple(c for c in record if c not in taken)
            try:
                yield _row(spec, line, record, columns, state)
            except ValueError as exc:
                yield BadRow(line, str(exc))
    except UnicodeDecodeError as exc:
        raise FileError(f"--from: {spec.path} is not UTF-8 text ({exc.reason})") from exc


@dataclass
class Scan:
    """A first pass over the file: what the run needs to be told, and the bad rows."""

    rows: int = 0
    width: int | None = None  # dense features per row
    names: set[str] = field(default_factory=set)  # feature names (named features)
    classes: set[int | str] = field(default_factory=set)  # labels and predictions seen
    bad: list[BadRow] = field(default_factory=list)

    def hint(self, named: bool) -> str:
        """The flags `streamlearn run` needs for these events."""
        flags = ["--model hashed"] if named or self.width is None else [f"--n-features {self.width}"]
        names = sorted(str(c) for c in self.classes if isinstance(c, str))
        if names and any(isinstance(c, int) for c in self.classes):
            return " ".join(flags) + " and --classes naming every class (the file mixes indices and names)"
        if names:
            flags.append(f"--classes {','.join(names)}")
        elif self.classes:
            flags.append(f"--classes {max(int(c) for c in self.classes) + 1}")
        return " ".join(flags)


def scan(spec: FileSpec) -> Scan:
    out = Scan()
    for row in read_rows(spec):
        if isinstance(row, BadRow):
            out.bad.append(row)
            continue
        out.rows += 1
        out.classes.update((row.prediction["prediction"], row.feedback["label"]))
        features = row.prediction["features"]
        if isinstance(features, dict):
            out.names.update(features)
        else:
            out.width = len(features)
    return out
