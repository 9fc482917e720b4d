"""The CLI: JSON summaries on stdout's last line, one-line errors, and the core claims of the objective."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from streamlearn import cli
from streamlearn.cli import build_parser, kafka_settings, main


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
        (["evaluate", "--events", "200", "--lr", "inf"], "optim.lr: must be a finite number"),
        (["evaluate", "--negative-weight", "inf"], "objective.negative_weight: must be a finite number"),
        (["evaluate", "--delay-mean", "nan"], "sim.delay_mean: must be a finite number"),
        (["evaluate", "--noise", "nan"], "data.noise: must be a finite number"),
        (["produce", "--rate", "inf"], "--rate: must be a finite number"),
        (["demo", "--checkpoint-every-seconds", "nan"], "checkpoint.every_seconds: must be a finite number"),
        (["demo", "--metrics-history", "/nonexistent/dir/h.jsonl"], "metrics.history"),
        (["demo", "--metrics-tls-certfile", "/nonexistent.crt", "--metrics-tls-keyfile", "/nonexistent.key"],
         "metrics.tls_certfile"),
    ],
)
def test_bad_arguments_fail_fast_with_one_line(args: list[str], needle: str, capsys) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("streamlearn: error:")


@pytest.fixture
def job_config(monkeypatch: pytest.MonkeyPatch) -> dict:
    """``main([...])`` for demo/run stops before Ray: the JobConfig the command built lands in the dict."""
    for name in [n for n in os.environ if n.startswith("STREAMLEARN_")]:
        monkeypatch.delenv(name)
    got: dict = {}

    def fake_run(cfg, name):
        got["cfg"] = cfg
        return {"stop_reason": "test"}

    monkeypatch.setattr(cli, "_run_job", fake_run)
    return got


def test_demo_honours_config_file_and_env(tmp_path, monkeypatch: pytest.MonkeyPatch, job_config: dict) -> None:
    """Precedence flag > env > file > default, for the stream and learning settings too."""
    f = tmp_path / "demo.yaml"
    f.write_text("sim: {events: 500}\nobjective: {name: positive-only}\nmodel: {kind: mlp, seed: 5}\n"
                 "optim: {lr: 0.1}\ndivergence: {guard: clip}\n")
    monkeypatch.setenv("STREAMLEARN_OPTIM_LR", "0.2")
    assert main(["demo", "--config", str(f), "--max-events", "2000"]) == 0
    cfg = job_config["cfg"]
    assert (cfg.sim.events, cfg.objective.name, cfg.model.kind, cfg.model.seed) == (500, "positive-only", "mlp", 5)
    assert (cfg.optim.lr, cfg.divergence.guard, cfg.stop.max_events) == (0.2, "clip", 2000)
    assert main(["demo", "--config", str(f), "--events", "300", "--lr", "0.05", "--seed", "3",
                 "--objective", "mixed"]) == 0
    cfg = job_config["cfg"]
    assert (cfg.sim.events, cfg.optim.lr, cfg.objective.name) == (300, 0.05, "mixed")
    assert cfg.model.seed == cfg.data.seed == cfg.sim.seed == 3
    monkeypatch.delenv("STREAMLEARN_OPTIM_LR")
    assert main(["demo"]) == 0  # no file, no env: the documented defaults
    cfg = job_config["cfg"]
    assert (cfg.sim.events, cfg.objective.name, cfg.model.kind, cfg.divergence.guard) == (20000, "mixed", "linear",
                                                                                          "rollback")
    assert main(["demo", "--dataset", "synthetic", "--classes", "4", "--n-features", "8"]) == 0
    cfg = job_config["cfg"]
    assert (len(cfg.classes), cfg.n_features, cfg.data.n_classes, cfg.data.n_features) == (4, 8, 4, 8)


def test_demo_section_that_is_not_a_mapping_fails(tmp_path, job_config: dict, capsys) -> None:
    f = tmp_path / "demo.yaml"
    f.write_text("data: digits\n")
    assert main(["demo", "--config", str(f)]) == 2
    assert "data: must be a mapping, got 'digits'" in capsys.readouterr().err
    assert "cfg" not in job_config


def test_kafka_commands_read_the_documented_env(monkeypatch: pytest.MonkeyPatch, job_config: dict) -> None:
    """README: STREAMLEARN_KAFKA_BOOTSTRAP_SERVERS (and every STREAMLEARN_KAFKA_<key>) for run, topics and produce;
    a flag wins; STREAMLEARN_KAFKA_BOOTSTRAP is the test harness's variable, not a setting."""
    monkeypatch.setenv("STREAMLEARN_KAFKA_BOOTSTRAP", "harness:1")
    monkeypatch.setenv("STREAMLEARN_KAFKA_BOOTSTRAP_SERVERS", "env:9093")
    monkeypatch.setenv("STREAMLEARN_KAFKA_GROUP_ID", "env-group")
    for argv in (["topics", "describe"], ["topics", "create"], ["produce"]):
        s = kafka_settings(build_parser().parse_args(argv))
        assert (s.bootstrap_servers, s.group_id) == ("env:9093", "env-group"), argv
    s = kafka_settings(build_parser().parse_args(["produce", "--bootstrap-servers", "flag:1"]))
    assert (s.bootstrap_servers, s.group_id) == ("flag:1", "env-group")
    assert main(["run"]) == 0
    assert job_config["cfg"].kafka.bootstrap_servers == "env:9093"


def test_help_names_only_the_documented_bootstrap_variable(capsys) -> None:
    for argv in (["run", "--help"], ["topics", "describe", "--help"], ["produce", "--help"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert "default $STREAMLEARN_KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092" in text, argv
        assert "$STREAMLEARN_KAFKA_BOOTSTRAP " not in text and "$STREAMLEARN_KAFKA_BOOTSTRAP)" not in text


def test_os_error_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def broken(args):
        raise FileNotFoundError(2, "No such file or directory", "/nonexistent/dir/h.jsonl")

    monkeypatch.setitem(cli.COMMANDS, "report", broken)
    assert main(["report", "--history", "h", "--out", "o.png"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("streamlearn: error:") and "/nonexistent/dir/h.jsonl" in err[0]


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


OLD_FLAGS = {
    "demo": "--classes --n-features --workers --partitions --codec --ps-mode --ps-shards --max-staleness "
            "--stale-policy --grads-per-push --push-budget --max-grads-per-push --pull-every --ray-address "
            "--ray-num-cpus --actor-resource --checkpoint-dir --checkpoint-every-seconds --checkpoint-every-updates "
            "--keep-checkpoints --metrics-host --metrics-port --metrics-history --metrics-tls-certfile "
            "--metrics-tls-keyfile --max-events --max-seconds --until-idle --model --hidden --buckets --optimizer "
            "--lr --batch-size --negative-weight --objective --guard --seed --dataset --noise --drift "
            "--sparse-active --events --policy --epsilon --judged-share --label-share --label-noise "
            "--duplicate-share --out-of-order-share --delay-mean --config",
    "run": "--classes --n-features --workers --bootstrap-servers --predictions-topic --feedback-topic --dlq-topic "
           "--group-id --security-protocol --ssl-cafile --ssl-certfile --ssl-keyfile --sasl-mechanism "
           "--sasl-username --sasl-password-file --config --ps-mode --ray-address --checkpoint-dir --until-idle",
    "produce": "--seed --codec --rate --pack --events --dataset --classes --n-features --bootstrap-servers",
    "evaluate": "--objective --guard --seed --events --lr --dataset",
}


@pytest.mark.parametrize("command", sorted(OLD_FLAGS))
def test_every_flag_is_still_there_and_help_shows_its_default(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert not {f for f in OLD_FLAGS[command].split() if f not in text.split()}
    if command in ("demo", "run"):
        assert "--max-staleness N" in text or "--max-staleness MAX_STALENESS" in text
        assert "(default $STREAMLEARN_PS_MAX_STALENESS or 2048)" in text
    if command == "evaluate":
        assert "(default none)" in text  # evaluate's own guard default, not the job's


def test_a_bad_flag_value_names_the_flag_and_the_key(job_config: dict, capsys) -> None:
    assert main(["demo", "--ps-shards", "0"]) == 2
    assert "--ps-shards: ps.shards: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["demo", "--workers", "x"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_seed_flag_sets_every_seed(job_config: dict) -> None:
    assert main(["demo", "--seed", "7", "--ray-dashboard"]) == 0
    cfg = job_config["cfg"]
    assert (cfg.model.seed, cfg.data.seed, cfg.sim.seed, cfg.ray.dashboard) == (7, 7, 7, True)


def _command_parser(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


HELP_DEFAULTS = [
    (("evaluate",), "--lr"), (("evaluate",), "--batch-size"), (("evaluate",), "--events"), (("evaluate",), "--seed"),
    (("evaluate",), "--policy"), (("evaluate",), "--dataset"), (("evaluate",), "--epsilon"),
    (("evaluate",), "--judged-share"), (("evaluate",), "--objective"), (("demo",), "--lr"), (("demo",), "--events"),
    (("demo",), "--pull-every"), (("demo",), "--judged-share"), (("run",), "--objective"), (("run",), "--pull-every"),
    (("run",), "--batch-size"), (("produce",), "--events"), (("produce",), "--policy"),
    (("topics", "create"), "--partitions"), (("topics", "create"), "--replication-factor"),
]


@pytest.mark.parametrize(("command", "flag"), HELP_DEFAULTS)
def test_help_says_what_a_flag_does_and_its_default(command: tuple[str, ...], flag: str, capsys) -> None:
    parser = _command_parser(*command)
    action = next(a for a in parser._actions if flag in a.option_strings)
    shown = (action.help or "") % {**vars(action), "prog": parser.prog}  # as argparse renders it
    what, _, default = shown.partition("(default ")
    assert what.strip() and default.strip(") "), f"{' '.join(command)} {flag}: {shown!r}"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    assert " ".join(shown.split()) in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["topics", "create", "--partitions", "x"], "argument --partitions: must be an integer >= 1, got 'x'"),
        (["topics"], "the following arguments are required: {create,describe}"),
        (["produce", "--pack", "0"], "argument --pack: must be >= 1, got 0"),
    ],
)
def test_errors_name_what_the_user_typed_not_internal_names(args: list[str], message: str, capsys) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "_positive_int" not in err and "topics_command" not in err


def test_version_prints_the_package_version(capsys) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"streamlearn {version('streamlearn')}"
