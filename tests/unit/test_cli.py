"""The CLI: JSON summaries on stdout's last line, one-line errors, and the core claims of the objective."""

import json
import subprocess
import sys

import pytest

from streamlearn.cli import main


def run_cli(*args: str) -> tuple[int, list[dict], str]:
    proc = subprocess.run([sys.executable, "-m", "streamlearn.cli", *args], capture_output=True, text=True,
                          timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, lines, proc.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["evaluate", "--dataset", "imagenet"], "--dataset"),
        (["evaluate", "--epsilon", "2"], "--epsilon"),
        (["evaluate", "--lr", "-1"], "lr"),
        (["evaluate", "--objective", "hinge"], "--objective"),
        (["evaluate", "--batch-size", "0"], "--batch-size"),
        (["demo", "--push-budget", "1.5"], "push_budget"),
        (["demo", "--max-grads-per-push", "0"], "--max-grads-per-push"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_fail_fast_with_one_line(args: list[str], needle: str, capsys) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("streamlearn: error:")


def test_evaluate_all_on_digits_random_policy() -> None:
    """The seed's question, answered: mixed learns from "wrong", negated diverges."""
    code, out, _ = run_cli("evaluate", "--dataset", "digits", "--policy", "random", "--events", "20000",
                           "--objective", "all")
    assert code == 0
    by = {r["objective"]: r for r in out}
    assert set(by) == {"mixed", "positive-only", "negated"}
    for r in out:
        for key in ("events", "examples", "heldout_accuracy", "progressive_accuracy", "final_loss",
                    "weight_norm", "diverged"):
            assert key in r
    assert by["mixed"]["heldout_accuracy"] >= 0.93
    assert by["mixed"]["heldout_accuracy"] >= by["positive-only"]["heldout_accuracy"] + 0.01  # the margin
    assert by["mixed"]["diverged"] is False
    assert by["negated"]["diverged"] is True
    assert by["negated"]["heldout_accuracy"] < 0.5
    assert by["negated"]["weight_norm"] > 5 * by["mixed"]["weight_norm"]


@pytest.mark.parametrize("events", [5000, 20000])
def test_epsilon_greedy_mixed_at_least_as_good_as_positive_only(events: int) -> None:
    code, out, _ = run_cli("evaluate", "--policy", "epsilon-greedy", "--epsilon", "0.1",
                           "--events", str(events), "--objective", "mixed")
    code2, out2, _ = run_cli("evaluate", "--policy", "epsilon-greedy", "--epsilon", "0.1",
                             "--events", str(events), "--objective", "positive-only")
    assert code == code2 == 0
    assert out[-1]["heldout_accuracy"] >= out2[-1]["heldout_accuracy"]
