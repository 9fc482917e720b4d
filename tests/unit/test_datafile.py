"""`produce --from FILE`: rows of a CSV or JSON-lines file become the contract's prediction and feedback events;
bad rows are reported by line number, never dropped in silence."""

import json
from pathlib import Path

import numpy as np
import pytest

from streamlearn.cli import main
from streamlearn.codec import decode
from streamlearn.datafile import BadRow, FileError, FileSpec, Row, read_rows, scan
from streamlearn.events import Feedback, Prediction, Schema


def rows_of(path: Path, **spec) -> list[Row | BadRow]:
    return list(read_rows(FileSpec(str(path), ts=1_764_300_000.0, **spec)))


def decoded(row: Row, schema: Schema) -> tuple[Prediction, Feedback]:
    """The row's events as a run decodes them: the contract, checked field by field."""
    (pred,) = decode(json.dumps(row.prediction).encode(), "prediction", schema)
    (fb,) = decode(json.dumps(row.feedback).encode(), "feedback", schema)
    assert isinstance(pred, Prediction) and isinstance(fb, Feedback)
    return pred, fb


def test_csv_rows_become_dense_events_with_named_classes(tmp_path: Path) -> None:
    path = tmp_path / "iris.csv"
    path.write_text("sepal,petal,label\n5.1,1.4,setosa\n6.7,4.7,versicolor\n")
    rows = rows_of(path)
    assert all(isinstance(r, Row) for r in rows)
    assert [r.id for r in rows] == ["iris-2", "iris-3"]  # generated: file stem and line
    schema = Schema(("setosa", "versicolor"), 2, named_features=False)
    pred, fb = decoded(rows[1], schema)
    assert pred.id == fb.id == "iris-3" and pred.ts == fb.ts == 1_764_300_000.0
    np.testing.assert_allclose(pred.features, [6.7, 4.7])
    assert (pred.prediction, fb.label, fb.correct) == (1, 1, None)  # the label stands in for the prediction


def test_columns_ids_and_predictions_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("req,a,b,c,served,truth\nr1,1,2,3,0,2\nr2,4,5,6,1,1\n")
    rows = rows_of(path, features=("c", "a"), label="truth", id_column="req", prediction_column="served")
    assert [r.id for r in rows if isinstance(r, Row)] == ["r1", "r2"]
    pred, fb = decoded(rows[0], Schema(("0", "1", "2"), 2, named_features=False))
    np.testing.assert_allclose(pred.features, [3.0, 1.0])  # in the order given
    assert (pred.prediction, fb.label) == (0, 2)


def test_named_features_for_the_hashed_model(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("colour,size,label\n0.5,3,1\n")
    (row,) = rows_of(path, named=True)
    assert isinstance(row, Row) and row.prediction["features"] == {"colour": 0.5, "size": 3.0}
    pred, _ = decoded(row, Schema(("0", "1"), 8))
    assert dict(pred.features) == {"colour": 0.5, "size": 3.0}


def test_json_lines_with_ready_made_vectors(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a", "x": [1, 2, 3], "y": 2}\n\n{"id": "b", "x": {"w1": 1}, "y": "2"}\n')
    a, b = rows_of(path, features=("x",), label="y", id_column="id")
    assert isinstance(a, Row) and a.prediction["features"] == [1.0, 2.0, 3.0] and a.feedback["label"] == 2
    assert isinstance(b, Row) and b.prediction["features"] == {"w1": 1.0} and b.feedback["label"] == 2


def test_bad_rows_are_reported_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("id,a,b,label\n"
                    "r1,1,2,0\n"      # 2: good
                    "r2,x,2,1\n"      # 3: not a number
                    "r3,1,nan,1\n"    # 4: not finite
                    "r4,1,2,\n"       # 5: empty label
                    "r5,1,2\n"        # 6: a cell short
                    "r1,3,4,1\n"      # 7: repeated id
                    "r7,1,2,0,9\n"    # 8: a cell too many
                    "r8,,2,0\n"       # 9: empty feature
                    "r9,1,2,1\n")     # 10: good
    rows = rows_of(path, id_column="id")
    assert [r.line for r in rows if isinstance(r, Row)] == [2, 10]
    bad = {r.line: r.reason for r in rows if isinstance(r, BadRow)}
    assert sorted(bad) == [3, 4, 5, 6, 7, 8, 9]
    assert "'a' is not a number" in bad[3] and "finite" in bad[4] and "'label' is empty" in bad[5]
    assert "repeats line 2" in bad[7] and "'a' is missing or empty" in bad[9]


def test_json_lines_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"f": [1, 2], "label": 0}\n{"f": [1, 2, 3], "label": 0}\nnot json\n[1]\n'
                    '{"f": [1, true], "label": 0}\n{"f": [1, 2], "label": true}\n{"f": [1, 2]}\n')
    rows = rows_of(path)
    assert isinstance(rows[0], Row)
    bad = {r.line: r.reason for r in rows if isinstance(r, BadRow)}
    assert sorted(bad) == [2, 3, 4, 5, 6, 7]
    assert "3 features, the rows before had 2" in bad[2] and "not JSON" in bad[3] and "not a JSON object" in bad[4]
    assert "no label column" in bad[7]


def test_scan_tells_the_run_its_flags(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b,c,label\n1,2,3,cat\n4,5,6,dog\n")
    assert scan(FileSpec(str(path))).hint(named=False) == "--n-features 3 --classes cat,dog"
    path.write_text("a,label\n1,0\n2,4\n")
    assert scan(FileSpec(str(path))).hint(named=False) == "--n-features 1 --classes 5"
    assert scan(FileSpec(str(path), named=True)).hint(named=True) == "--model hashed --classes 5"


def test_unknown_extension_needs_a_format(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("a,label\n1,0\n")
    with pytest.raises(FileError, match="--format"):
        list(read_rows(FileSpec(str(path))))
    assert [type(r) for r in rows_of(path, format="csv")] == [Row]


def test_produce_from_a_file_with_bad_rows_lists_them_and_writes_nothing(tmp_path: Path, capsys) -> None:
    """Checked before any broker is contacted: the address below has no broker."""
    path = tmp_path / "x.csv"
    path.write_text("a,label\n1,0\nx,1\n2,1\n,0\n")
    args = ["produce", "--bootstrap-servers", "127.0.0.1:1", "--from", str(path)]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"produce: {path} line 3: feature 'a' is not a number: 'x'" in err
    assert any(line.startswith(f"produce: {path} line 5: ") for line in err)
    assert err[-1].startswith("streamlearn: error: --from: 2 bad rows of 4") and "--skip-bad-rows" in err[-1]
    assert main([*args, "--codec", "binary"]) == 2
    assert "--codec" in capsys.readouterr().err
