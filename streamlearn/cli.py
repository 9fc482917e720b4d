"""``streamlearn ...`` commands.

Every command prints progress and logs on stderr and ends with one JSON line
on stdout (for ``evaluate --objective all``, one per objective), so scripts
read results with ``tail -n 1``. A bad flag, config or environment value exits 2
with one line naming it; a file the command cannot open exits 1 with one line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from streamlearn import config
from streamlearn.cluster import LOOPBACK_ENV as LOOPBACK_ENV
from streamlearn.cluster import loopback_ray
from streamlearn.config import CODECS, OBJECTIVES, DataConfig, JobConfig, SimConfig
from streamlearn.config.flags import add_flags, flag_of, overrides, select

if TYPE_CHECKING:  # typing only: the Kafka client loads when a command talks to Kafka
    from streamlearn.kafka import KafkaSettings


class CliError(Exception):
    """A problem with the command line or config: reported in one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


# evaluate compares the objectives unguarded
EVALUATE_DEFAULTS: dict[tuple[str, ...], Any] = {("divergence", "guard"): "none"}


def _add_learning(p: argparse.ArgumentParser, env: bool, objective: bool = True) -> None:
    exclude = () if objective else (("objective", "name"),)
    add_flags(p, p.add_argument_group("learning"), select(("model", "optim", "objective", "divergence"),
                                                          exclude=exclude), env,
              shown={} if env else EVALUATE_DEFAULTS)


def _add_stream(p: argparse.ArgumentParser, env: bool) -> None:
    add_flags(p, p.add_argument_group("simulated stream"), select(("data", "sim")), env)


def _add_kafka(p: argparse.ArgumentParser) -> None:
    """Where the broker is and how to reach it; shared by every command that talks to Kafka."""
    group = p.add_argument_group("kafka", "a flag not given comes from the config file's kafka section (run), "
                                 "else its $STREAMLEARN_KAFKA_<KEY> variable, else the default shown")
    add_flags(p, group, select(("kafka",)), env=True)


def _add_job(p: argparse.ArgumentParser, embedded: bool) -> None:
    """The job's flags; a flag not given leaves the config file / STREAMLEARN_* environment in force."""
    g = p.add_argument_group("job")
    g.add_argument("--config", default=argparse.SUPPRESS,
                   help="YAML config file; STREAMLEARN_* environment variables and flags override it")
    top = ("workers", "partitions", "codec") if embedded else ("classes", "n_features", "workers")
    add_flags(p, g, select(("ps", "ray", "checkpoint", "metrics", "stop"), top=top), env=True)


_KAFKA_FLAGS = {
    "sasl_password": "--sasl-password-file / $STREAMLEARN_KAFKA_SASL_PASSWORD",
    "connect_timeout_ms": "connect_timeout_ms",
    "client": "--kafka-client",
}


def kafka_settings(args: argparse.Namespace) -> KafkaSettings:
    """KafkaSettings from the kafka flags over $STREAMLEARN_KAFKA_* (the config loader's layering);
    a bad value is a one-line CliError naming the flag."""
    from streamlearn.kafka import KafkaSettings

    kafka = config.load_kafka(getattr(args, "config", None), overrides(args).get("kafka", {}))
    try:
        password = kafka.password()  # None unless SASL
    except config.ConfigError as exc:
        raise CliError(str(exc).replace("kafka.sasl_password_file", "--sasl-password-file", 1)) from exc
    try:
        return KafkaSettings(**{f: getattr(kafka, f) for f in kafka.__dataclass_fields__
                                if f in KafkaSettings.__dataclass_fields__}, sasl_password=password)
    except ValueError as exc:
        key, _, rest = str(exc).partition(": ")
        flag = _KAFKA_FLAGS.get(key, "--" + key.replace("_", "-") if key.isidentifier() else key)
        raise CliError(f"{flag}: {rest}" if rest else str(exc)) from exc


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamlearn")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamlearn", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ev = sub.add_parser("evaluate", help="compare objectives on the simulated stream (single process)")
    _add_stream(ev, env=False)
    _add_learning(ev, env=False, objective=False)
    ev.add_argument("--objective", choices=(*OBJECTIVES, "all"), default="mixed",
                    help="training objective, or all three side by side (default %(default)s)")

    # demo and run: a flag not given leaves the config file / STREAMLEARN_* environment in force
    demo = sub.add_parser("demo", help="run the main job (Ray actors, parameter servers) on the embedded stream")
    _add_stream(demo, env=True)
    _add_learning(demo, env=True)
    _add_job(demo, embedded=True)

    predict = sub.add_parser("predict", help="score feature JSON lines (stdin) with the newest checkpoint")
    predict.add_argument("--checkpoint-dir", required=True, help="where `run --checkpoint-dir` saved the model")

    run = sub.add_parser("run", help="the main job: consume Kafka, train on Ray, checkpoint, export metrics",
                         allow_abbrev=False)
    _add_kafka(run)
    _add_learning(run, env=True)
    _add_job(run, embedded=False)

    # allow_abbrev=False: "--sasl-password" must not pass as an abbreviation of --sasl-password-file
    topics = sub.add_parser("topics", help="create or describe the Kafka topics", allow_abbrev=False)
    topics_sub = topics.add_subparsers(dest="topics_command", metavar="{create,describe}", required=True,
                                       parser_class=_Parser)  # the metavar names it in errors, not the dest
    create = topics_sub.add_parser("create", help="create the predictions, feedback and DLQ topics "
                                   "(idempotent)", allow_abbrev=False)
    _add_kafka(create)
    create.add_argument("--partitions", type=_positive_int, default=4, metavar="N",
                        help="partitions of each topic; predictions and feedback must match (default %(default)s)")
    create.add_argument("--replication-factor", type=_positive_int, default=1, metavar="N",
                        help="copies of each partition on the brokers (default %(default)s)")
    create.add_argument("--retention-ms", type=int, default=None, metavar="MS",
                        help="retention of predictions and feedback (default: the broker's)")
    describe = topics_sub.add_parser("describe", help="partition counts and co-partitioning of the topics",
                                     allow_abbrev=False)
    _add_kafka(describe)

    produce = sub.add_parser("produce", help="write the simulated stream to the Kafka topics",
                             allow_abbrev=False)
    _add_kafka(produce)
    _add_stream(produce, env=False)
    produce.add_argument("--codec", choices=CODECS, default="json", help="(default %(default)s)")
    produce.add_argument("--rate", type=float, default=None, metavar="X",
                         help="events per second (default: as fast as possible)")
    produce.add_argument("--pack", type=_positive_int, default=64, metavar="N",
                         help="binary: events per Kafka record (default %(default)s)")
    _add_from_file(produce)

    report = sub.add_parser("report", help="draw a PNG of a run from its --metrics-history file")
    report.add_argument("--history", required=True, help="JSON-lines metrics history written by a run")
    report.add_argument("--out", required=True, help="PNG file to write")
    return parser


def _add_from_file(p: argparse.ArgumentParser) -> None:
    from streamlearn.datafile import FORMATS

    g = p.add_argument_group("your own data", "with --from, one prediction and one feedback event per row of a "
                             "CSV or JSON-lines file instead of the simulated stream (whose flags are then unused)")
    g.add_argument("--from", dest="from_file", metavar="FILE", help="CSV (with a header row) or JSON-lines file")
    g.add_argument("--format", choices=FORMATS, help="(default: from the extension, .csv or .jsonl/.ndjson/.json)")
    g.add_argument("--features", metavar="COLS", help="comma-separated feature columns (default: every column but "
                   "the label, id and prediction columns)")
    g.add_argument("--label", default="label", metavar="COL",
                   help="column of the true label, a class index or name (default %(default)s)")
    g.add_argument("--id-column", metavar="COL", help="column of the prediction id (default: <file stem>-<line>)")
    g.add_argument("--prediction-column", metavar="COL",
                   help="column of what the deployed model answered (default: the label)")
    g.add_argument("--named-features", action="store_true", help="features as {column: value}, for `run --model "
                   "hashed` (default: a list in column order, for `run --n-features N`)")
    g.add_argument("--skip-bad-rows", action="store_true", help="produce the good rows when some are bad "
                   "(default: list the bad rows and produce nothing)")


def _run_job(cfg: JobConfig, name: str) -> dict[str, Any]:
    if not cfg.ray.address:
        loopback_ray()  # before streamlearn.job imports ray
    from streamlearn.job import Job
    from streamlearn.kafka import KafkaSetupError

    job = Job(cfg, lambda msg: _log(f"{name}: {msg}"), handle_signals=True)
    try:
        summary = job.run()
    except KafkaSetupError as exc:
        raise CliError(str(exc)) from exc
    if cfg.source == "embedded":  # the simulator knows the true labels of a held-out set: score the model on it
        from streamlearn.evaluate import heldout_summary

        summary.update(heldout_summary(cfg, job.weights))
    _log(f"{name}: stopped ({summary['stop_reason']}): {summary['events_consumed']} records, "
         f"{summary['model_examples_positive']}+/{summary['model_examples_negative']}- examples in the model, "
         f"progressive accuracy {summary['progressive_accuracy']}, {summary['events_per_second']} records/s")
    for warning in summary["warnings"]:  # last on stderr, where a user looks when the numbers disappoint
        _log(f"{name}: WARNING: {warning}")
    return summary


def cmd_run(args: argparse.Namespace) -> int:
    cfg = config.load(getattr(args, "config", None), {**overrides(args), "source": "kafka"})
    _emit(_run_job(cfg, "run"))
    return 0


def _learning_process() -> None:
    """Before a command learns in this process: tiny micro-batches run faster on one torch thread."""
    import torch

    from streamlearn.worker import tune_gc

    torch.set_num_threads(1)
    tune_gc()


def cmd_predict(args: argparse.Namespace) -> int:
    from streamlearn.predict import load_model, predict_lines

    _learning_process()
    learner, schema, info = load_model(args.checkpoint_dir)
    _log(f"predict: model version {info['version']} from {info['checkpoint']}")
    for out in predict_lines(learner, schema, sys.stdin):
        _emit(out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = config.load(getattr(args, "config", None), {**overrides(args), "source": "embedded"})
    _log(f"demo: {cfg.sim.events} predictions from a {cfg.sim.policy} policy on {cfg.data.dataset}, "
         f"{cfg.workers} worker(s) on {cfg.partitions} partitions, ps {cfg.ps.mode} x{cfg.ps.shards}, "
         f"objective {cfg.objective.name}")
    _emit(_run_job(cfg, "demo"))
    return 0


def eval_config(args: argparse.Namespace, objective: str) -> Any:
    """The single-process evaluation's config: each section built by :func:`config.build` from the flags, so a
    flag is checked as the same key in a config file would be."""
    from streamlearn.evaluate import EvalConfig
    from streamlearn.objective import Objective

    data, sim = stream_configs(args)
    over = overrides(args)
    guard = {"guard": EVALUATE_DEFAULTS[("divergence", "guard")], **over.get("divergence", {})}
    return EvalConfig(data=data, sim=sim, model=config.build(config.ModelConfig, over.get("model", {}), "model"),
                      optim=config.build(config.OptimConfig, over.get("optim", {}), "optim"),
                      objective=Objective.of(config.build(config.ObjectiveConfig,
                                                              {**over.get("objective", {}), "name": objective},
                                                              "objective")),
                      divergence=config.build(config.DivergenceConfig, guard, "divergence"))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _emit(summary: Mapping[str, Any]) -> None:
    print(json.dumps(summary), flush=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from streamlearn.evaluate import evaluate

    names = OBJECTIVES if args.objective == "all" else (args.objective,)
    configs = [eval_config(args, name) for name in names]  # validate all before running any
    _learning_process()
    results = [evaluate(cfg, _log) for cfg in configs]
    for r in results:
        _emit(r)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streamlearn.kafka import KafkaSetupError, create_topics, describe_topics

    settings = kafka_settings(args)
    try:
        if args.topics_command == "create":
            status = create_topics(settings, args.partitions, args.replication_factor, args.retention_ms)
            for topic, what in status.items():
                _log(f"topics: {topic}: {what}")
        summary = describe_topics(settings)
    except KafkaSetupError as exc:
        raise CliError(str(exc)) from exc
    if not summary["copartitioned"]:
        _log("topics: warning: predictions and feedback are not co-partitioned "
             "(a topic is missing, or partition counts differ)")
    _emit(summary)
    return 0


def stream_configs(args: argparse.Namespace) -> tuple[DataConfig, SimConfig]:
    """The simulated stream's configs from the stream flags (plus ``--seed``), built and checked by
    :func:`config.build` as the ``data`` and ``sim`` sections of a config file are."""
    over = overrides(args)
    return config.build(DataConfig, over.get("data", {}), "data"), config.build(SimConfig, over.get("sim", {}), "sim")


BAD_ROWS_SHOWN = 20  # bad rows listed one per line on stderr; the rest are counted


def _file_events(args: argparse.Namespace, settings: KafkaSettings) -> tuple[Iterable[Any], dict[str, Any]]:
    """The events of ``--from FILE`` after a first pass that lists its bad rows (and stops, unless
    ``--skip-bad-rows``), and the summary's fields about the file."""
    from streamlearn.datafile import FileSpec, Row, read_rows, scan
    from streamlearn.kafka import JsonRecord

    if args.codec != "json":
        raise CliError("--codec: --from writes the JSON contract; leave --codec at json")
    features = tuple(c.strip() for c in args.features.split(",") if c.strip()) if args.features else None
    spec = FileSpec(args.from_file, args.format, features, args.label, args.id_column, args.prediction_column,
                    args.named_features, time.time())
    seen = scan(spec)
    for bad in seen.bad[:BAD_ROWS_SHOWN]:
        _log(f"produce: {args.from_file} line {bad.line}: {bad.reason}")
    if len(seen.bad) > BAD_ROWS_SHOWN:
        _log(f"produce: ... and {len(seen.bad) - BAD_ROWS_SHOWN} more bad rows")
    if seen.bad and (not args.skip_bad_rows or not seen.rows):
        what = "no good rows" if not seen.rows else "give --skip-bad-rows to produce the good ones"
        raise CliError(f"--from: {len(seen.bad)} bad rows of {seen.rows + len(seen.bad)} in {args.from_file} "
                       f"(listed above); {what}")
    if not seen.rows:
        raise CliError(f"--from: {args.from_file} has no rows")
    _log(f"produce: {seen.rows} rows of {args.from_file} to {settings.predictions_topic} and "
         f"{settings.feedback_topic} at {settings.bootstrap_servers}; learn from them with "
         f"`streamlearn run {seen.hint(args.named_features)}`")
    events = (JsonRecord(r.id, pred, r.prediction if pred else r.feedback)
              for r in read_rows(spec) if isinstance(r, Row) for pred in (True, False))
    return events, {"rows": seen.rows, "bad_rows": len(seen.bad), "bad_lines": [b.line for b in seen.bad[:100]]}


def cmd_produce(args: argparse.Namespace) -> int:
    from streamlearn.kafka import KafkaSetupError, produce_stream
    from streamlearn.simulate import Simulator

    settings = kafka_settings(args)
    if args.rate is not None and not (math.isfinite(args.rate) and args.rate > 0):
        raise CliError(f"--rate: must be a finite number > 0 events/s, got {args.rate}")
    extra: dict[str, Any] = {}
    if args.from_file is not None:
        events, extra = _file_events(args, settings)
    else:
        data, sim = stream_configs(args)
        _log(f"produce: {sim.events} predictions ({data.dataset}, {sim.policy} policy) to "
             f"{settings.predictions_topic} and {settings.feedback_topic} at {settings.bootstrap_servers}, "
             f"codec {args.codec}")
        events = Simulator(sim, data).events()
    start = time.perf_counter()
    try:
        counts = produce_stream(settings, events, codec=args.codec, rate=args.rate, pack=args.pack)
    except KafkaSetupError as exc:
        raise CliError(str(exc)) from exc
    seconds = time.perf_counter() - start
    sent = counts["predictions"] + counts["feedback"]
    _emit({**counts, **extra, "codec": args.codec, "seconds": round(seconds, 3),
           "events_per_second": round(sent / seconds, 1) if seconds > 0 else None})
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from streamlearn.report import report

    _emit(report(args.history, args.out))
    return 0


COMMANDS = {"evaluate": cmd_evaluate, "demo": cmd_demo, "run": cmd_run, "predict": cmd_predict, "topics": cmd_topics,
            "produce": cmd_produce, "report": cmd_report}


def _one_line(exc: Exception, args: argparse.Namespace | None) -> str:
    """A config error names the flag that set the bad value, if a flag did."""
    flag = flag_of(args, exc.key) if isinstance(exc, config.ConfigError) and args is not None else None
    return f"{flag}: {exc}" if flag and flag not in str(exc) else str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (CliError, ValueError) as exc:
        print(f"streamlearn: error: {_one_line(exc, args)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or socket the command could not open: one line, not a traceback
        print(f"streamlearn: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
