"""``streamlearn ...`` commands.

Every command prints progress and logs on stderr and ends with one JSON line
on stdout (for ``evaluate --objective all``, one per objective), so scripts
read results with ``tail -n 1``. A bad flag, config or environment value exits 2
with one line naming it; a file the command cannot open exits 1 with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import torch

from streamlearn import config
from streamlearn.codec import CODECS
from streamlearn.config import JobConfig
from streamlearn.divergence import GUARDS, DivergenceConfig
from streamlearn.evaluate import EvalConfig, evaluate, heldout_summary
from streamlearn.kafka_source import SASL_MECHANISMS, SECURITY_PROTOCOLS, KafkaSettings, KafkaSetupError
from streamlearn.learner import OPTIMIZERS, OptimConfig
from streamlearn.model import MODELS, ModelConfig
from streamlearn.objective import OBJECTIVES, Objective
from streamlearn.paramserver import PS_MODES, STALE_POLICIES
from streamlearn.simulate import DATASETS, POLICIES, DataConfig, SimConfig
from streamlearn.worker import tune_gc


class CliError(Exception):
    """A problem with the command line or config: reported in one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: {message}")


def _share(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def _suppressing(group: Any, suppress: bool) -> Any:
    """A group whose flags default to "not given" when ``suppress`` (config file and env fill them)."""
    if not suppress:
        return group
    add = group.add_argument

    def add_argument(*names: str, **kw: Any) -> Any:
        kw["default"] = argparse.SUPPRESS
        return add(*names, **kw)

    group.add_argument = add_argument
    return group


def _add_learning(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    g = _suppressing(p.add_argument_group("learning"), suppress)
    g.add_argument("--model", choices=MODELS, default="linear", help="softmax model (default linear)")
    g.add_argument("--hidden", type=_positive_int, default=64, help="mlp hidden units")
    g.add_argument("--buckets", type=_positive_int, default=1 << 18, help="hashed model buckets")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adagrad")
    g.add_argument("--lr", type=float, default=OptimConfig.lr, help="learning rate")
    g.add_argument("--batch-size", type=_positive_int, default=OptimConfig.batch_size, help="micro-batch size")
    g.add_argument("--negative-weight", type=float, default=Objective.negative_weight,
                   help="weight of each negative term relative to a positive (default 1.0)")
    g.add_argument("--guard", choices=GUARDS, default=None, help="divergence guard")
    g.add_argument("--seed", type=int, default=0)


def _add_stream(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    g = _suppressing(p.add_argument_group("simulated stream"), suppress)
    g.add_argument("--dataset", choices=DATASETS, default="digits")
    g.add_argument("--n-features", type=_positive_int, default=64, help="synthetic: input width")
    g.add_argument("--classes", type=_positive_int, default=10, help="synthetic: number of classes")
    g.add_argument("--noise", type=float, default=1.0, help="synthetic: class overlap")
    g.add_argument("--drift", type=float, default=0.0, help="synthetic: concept drift per 10,000 events")
    g.add_argument("--sparse-active", type=int, default=0, help="synthetic: named sparse features per event")
    g.add_argument("--policy", choices=POLICIES, default="random", help="logging policy of the deployed model")
    g.add_argument("--epsilon", type=_share, default=0.1, help="epsilon-greedy exploration rate")
    g.add_argument("--events", type=int, default=20_000, help="predictions the deployed model serves")
    g.add_argument("--judged-share", type=_share, default=1.0, help="share of predictions judged")
    g.add_argument("--label-share", type=_share, default=0.0, help="share of judgements giving the true label")
    g.add_argument("--label-noise", type=_share, default=0.0, help="share of judgements that are wrong")
    g.add_argument("--duplicate-share", type=_share, default=0.0)
    g.add_argument("--out-of-order-share", type=_share, default=0.0)
    g.add_argument("--delay-mean", type=float, default=30.0, help="mean feedback delay, event seconds")


def _add_kafka(p: argparse.ArgumentParser) -> None:
    """Where the broker is and how to reach it; shared by every command that talks to Kafka.

    Every flag defaults to "not given", so the config file (``run --config``), then
    ``STREAMLEARN_KAFKA_<FLAG>`` fill it, as :mod:`streamlearn.config` documents.
    """
    g = _suppressing(p.add_argument_group(
        "kafka", "a flag not given comes from the config file's kafka section (run), else "
                 "$STREAMLEARN_KAFKA_<FLAG> (e.g. STREAMLEARN_KAFKA_BOOTSTRAP_SERVERS), else the default shown"), True)
    g.add_argument("--bootstrap-servers",
                   help=f"host:port[,host:port] (default $STREAMLEARN_KAFKA_BOOTSTRAP_SERVERS or "
                        f"{config.KafkaConfig.bootstrap_servers})")
    g.add_argument("--predictions-topic", help=f"(default {config.KafkaConfig.predictions_topic})")
    g.add_argument("--feedback-topic", help=f"(default {config.KafkaConfig.feedback_topic})")
    g.add_argument("--dlq-topic", help=f"dead letters (default {config.KafkaConfig.dlq_topic})")
    g.add_argument("--group-id", help=f"consumer group, lag monitoring only (default {config.KafkaConfig.group_id})")
    g.add_argument("--security-protocol", choices=SECURITY_PROTOCOLS,
                   help=f"(default {config.KafkaConfig.security_protocol})")
    g.add_argument("--ssl-cafile", help="CA bundle for the broker certificate")
    g.add_argument("--ssl-certfile", help="client certificate (mutual TLS)")
    g.add_argument("--ssl-keyfile", help="client private key (mutual TLS)")
    g.add_argument("--sasl-mechanism", choices=SASL_MECHANISMS)
    g.add_argument("--sasl-username")
    g.add_argument("--sasl-password-file",
                   help="file holding the SASL password (else $STREAMLEARN_KAFKA_SASL_PASSWORD)")


_KAFKA_FLAGS = {
    "sasl_password": "--sasl-password-file / $STREAMLEARN_KAFKA_SASL_PASSWORD",
    "connect_timeout_ms": "connect_timeout_ms",
}


def kafka_settings(args: argparse.Namespace) -> KafkaSettings:
    """KafkaSettings from the ``_add_kafka`` flags over $STREAMLEARN_KAFKA_* (the config loader's layering);
    a bad value is a one-line CliError naming the flag."""
    kafka = config.load_kafka(getattr(args, "config", None), job_overrides(args).get("kafka", {}))
    try:
        password = kafka.password()  # None unless SASL
    except config.ConfigError as exc:
        raise CliError(str(exc).replace("kafka.sasl_password_file", "--sasl-password-file", 1)) from exc
    try:
        return KafkaSettings(**{f.name: getattr(kafka, f.name) for f in dataclasses.fields(kafka)
                                if f.name != "sasl_password_file"}, sasl_password=password)
    except ValueError as exc:
        key, _, rest = str(exc).partition(": ")
        flag = _KAFKA_FLAGS.get(key, "--" + key.replace("_", "-") if key.isidentifier() else key)
        raise CliError(f"{flag}: {rest}" if rest else str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamlearn", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ev = sub.add_parser("evaluate", help="compare objectives on the simulated stream (single process)")
    _add_stream(ev)
    _add_learning(ev)
    ev.add_argument("--objective", choices=(*OBJECTIVES, "all"), default="mixed")

    # demo and run: a flag not given leaves the config file / STREAMLEARN_* environment in force
    demo = sub.add_parser("demo", help="run the main job (Ray actors, parameter servers) on the embedded stream")
    _add_stream(demo, suppress=True)
    _add_learning(demo, suppress=True)
    demo.add_argument("--objective", choices=OBJECTIVES, default=argparse.SUPPRESS, help="(default mixed)")
    _add_job(demo, embedded=True)

    predict = sub.add_parser("predict", help="score feature JSON lines (stdin) with the newest checkpoint")
    predict.add_argument("--checkpoint-dir", required=True, help="where `run --checkpoint-dir` saved the model")

    run = sub.add_parser("run", help="the main job: consume Kafka, train on Ray, checkpoint, export metrics",
                         allow_abbrev=False)
    _add_kafka(run)
    _add_learning(run, suppress=True)
    run.add_argument("--objective", choices=OBJECTIVES, default=argparse.SUPPRESS)
    _add_job(run, embedded=False)

    # allow_abbrev=False: "--sasl-password" must not pass as an abbreviation of --sasl-password-file
    topics = sub.add_parser("topics", help="create or describe the Kafka topics", allow_abbrev=False)
    topics_sub = topics.add_subparsers(dest="topics_command", required=True, parser_class=_Parser)
    create = topics_sub.add_parser("create", help="create the predictions, feedback and DLQ topics "
                                   "(idempotent)", allow_abbrev=False)
    _add_kafka(create)
    create.add_argument("--partitions", type=_positive_int, default=4,
                        help="partitions of each topic (predictions and feedback must match)")
    create.add_argument("--replication-factor", type=_positive_int, default=1)
    create.add_argument("--retention-ms", type=int, default=None,
                        help="retention of predictions and feedback (default: the broker's)")
    describe = topics_sub.add_parser("describe", help="partition counts and co-partitioning of the topics",
                                     allow_abbrev=False)
    _add_kafka(describe)

    produce = sub.add_parser("produce", help="write the simulated stream to the Kafka topics",
                             allow_abbrev=False)
    _add_kafka(produce)
    _add_stream(produce)
    produce.add_argument("--seed", type=int, default=0)
    produce.add_argument("--codec", choices=CODECS, default="json")
    produce.add_argument("--rate", type=float, default=None,
                         help="events per second (default: as fast as possible)")
    produce.add_argument("--pack", type=_positive_int, default=64, help="binary: events per Kafka record")

    report = sub.add_parser("report", help="draw a PNG of a run from its --metrics-history file")
    report.add_argument("--history", required=True, help="JSON-lines metrics history written by a run")
    report.add_argument("--out", required=True, help="PNG file to write")
    return parser


def _add_job(p: argparse.ArgumentParser, embedded: bool) -> None:
    """The job's flags. Unset flags leave the config file / STREAMLEARN_* environment in force."""
    g = _suppressing(p.add_argument_group("job"), True)
    g.add_argument("--config", help="YAML config file; STREAMLEARN_* environment variables and flags override it")
    if not embedded:
        g.add_argument("--classes", help="class count, or comma-separated class names (default 10)")
        g.add_argument("--n-features", type=_positive_int, help="dense feature width (default 64)")
    g.add_argument("--workers", type=_positive_int, help="worker actors (default 1)")
    if embedded:
        g.add_argument("--partitions", type=_positive_int, help="embedded stream partitions (default 2)")
        g.add_argument("--codec", choices=CODECS, help="embedded stream wire format (default json)")
    g.add_argument("--ps-mode", choices=PS_MODES, help="parameter-server mode: sync, async or bounded (default async)")
    g.add_argument("--ps-shards", type=_positive_int, help="parameter-server actors (default 1)")
    g.add_argument("--max-staleness", type=_positive_int,
                   help="bounded mode: versions a gradient may lag (default 2048); sparse models: versions a row "
                        "a worker reads may lag")
    g.add_argument("--stale-policy", choices=STALE_POLICIES, help="bounded mode: drop or downweight stale gradients")
    g.add_argument("--grads-per-push", type=_positive_int,
                   help="micro-batches per push (sync: per round), at least (default 64)")
    g.add_argument("--push-budget", type=float,
                   help="share of a worker's step time its pushes may take before a push carries more "
                        "micro-batches (default 0.04; 0: a fixed --grads-per-push)")
    g.add_argument("--max-grads-per-push", type=_positive_int, help="micro-batches per push, at most (default 1024)")
    g.add_argument("--pull-every", type=_positive_int, help="pushes between weight pulls")
    g.add_argument("--ray-address", help="join this Ray cluster ('auto' inside one); default: start Ray here")
    g.add_argument("--ray-num-cpus", type=_positive_int, help="CPUs of the local Ray")
    g.add_argument("--actor-resource", help="with --ray-address: run the actors only on nodes offering this "
                   "custom Ray resource (0.001 each), spread over them; default: any node")
    g.add_argument("--checkpoint-dir", help="checkpoints go here; the newest valid one is restored at start")
    g.add_argument("--checkpoint-every-seconds", type=float, help="periodic checkpoint interval (default 30)")
    g.add_argument("--checkpoint-every-updates", type=int, help="also checkpoint every N model updates")
    g.add_argument("--keep-checkpoints", type=_positive_int, help="newest checkpoints kept (default 3)")
    g.add_argument("--metrics-host", help="scrape endpoint address (default 127.0.0.1)")
    g.add_argument("--metrics-port", type=int, help="scrape endpoint port (default: no endpoint)")
    g.add_argument("--metrics-history", help="append metric snapshots to this JSON-lines file (for `report`)")
    g.add_argument("--metrics-tls-certfile", help="serve metrics over TLS with this certificate")
    g.add_argument("--metrics-tls-keyfile", help="... and this key")
    g.add_argument("--max-events", type=int, help="stop after this many records consumed")
    g.add_argument("--max-seconds", type=float, help="stop after this many seconds")
    g.add_argument("--until-idle", type=float, help="stop once no new record arrived for this many seconds")


# Ray picks a new local node's address when `ray` is imported; with this at 0 it is 127.0.0.1, so the GCS,
# raylet, workers, agents and metrics servers all listen on loopback (else on the outward address or *).
# Only for a Ray started here: `ray start` refuses to join a cluster with it set.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_ray() -> None:
    """Call before anything imports ray: a local Ray then listens on 127.0.0.1 only (a user's setting wins)."""
    os.environ.setdefault(LOOPBACK_ENV, "0")


# flag (argparse dest) -> config key path
JOB_KEYS: dict[str, tuple[str, ...]] = {
    "classes": ("classes",), "n_features": ("n_features",), "workers": ("workers",),
    "partitions": ("partitions",), "codec": ("codec",),
    "ps_mode": ("ps", "mode"), "ps_shards": ("ps", "shards"), "max_staleness": ("ps", "max_staleness"),
    "stale_policy": ("ps", "stale_policy"), "grads_per_push": ("ps", "grads_per_push"),
    "push_budget": ("ps", "push_budget"), "max_grads_per_push": ("ps", "max_grads_per_push"),
    "pull_every": ("ps", "pull_every"),
    "ray_address": ("ray", "address"), "ray_num_cpus": ("ray", "num_cpus"),
    "actor_resource": ("ray", "actor_resource"),
    "checkpoint_dir": ("checkpoint", "dir"), "checkpoint_every_seconds": ("checkpoint", "every_seconds"),
    "checkpoint_every_updates": ("checkpoint", "every_updates"), "keep_checkpoints": ("checkpoint", "keep"),
    "metrics_host": ("metrics", "host"), "metrics_port": ("metrics", "port"),
    "metrics_history": ("metrics", "history"), "metrics_tls_certfile": ("metrics", "tls_certfile"),
    "metrics_tls_keyfile": ("metrics", "tls_keyfile"),
    "max_events": ("stop", "max_events"), "max_seconds": ("stop", "max_seconds"),
    "until_idle": ("stop", "until_idle"),
    "model": ("model", "kind"), "hidden": ("model", "hidden"), "buckets": ("model", "buckets"),
    "optimizer": ("optim", "name"), "lr": ("optim", "lr"), "batch_size": ("optim", "batch_size"),
    "negative_weight": ("objective", "negative_weight"), "objective": ("objective", "name"),
    "guard": ("divergence", "guard"),
    "dataset": ("data", "dataset"), "noise": ("data", "noise"), "drift": ("data", "drift"),
    "sparse_active": ("data", "sparse_active"),
    "events": ("sim", "events"), "policy": ("sim", "policy"), "epsilon": ("sim", "epsilon"),
    "judged_share": ("sim", "judged_share"), "label_share": ("sim", "label_share"),
    "label_noise": ("sim", "label_noise"), "duplicate_share": ("sim", "duplicate_share"),
    "out_of_order_share": ("sim", "out_of_order_share"), "delay_mean": ("sim", "delay_mean"),
    "bootstrap_servers": ("kafka", "bootstrap_servers"), "predictions_topic": ("kafka", "predictions_topic"),
    "feedback_topic": ("kafka", "feedback_topic"), "dlq_topic": ("kafka", "dlq_topic"),
    "group_id": ("kafka", "group_id"), "security_protocol": ("kafka", "security_protocol"),
    "ssl_cafile": ("kafka", "ssl_cafile"), "ssl_certfile": ("kafka", "ssl_certfile"),
    "ssl_keyfile": ("kafka", "ssl_keyfile"), "sasl_mechanism": ("kafka", "sasl_mechanism"),
    "sasl_username": ("kafka", "sasl_username"), "sasl_password_file": ("kafka", "sasl_password_file"),
}


SEED_KEYS = (("model", "seed"), ("data", "seed"), ("sim", "seed"))  # --seed: the model's and the stream's


def job_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags the user gave, as a nested config mapping."""
    out: dict[str, Any] = {}
    given = [(path, getattr(args, dest)) for dest, path in JOB_KEYS.items() if getattr(args, dest, None) is not None]
    if getattr(args, "seed", None) is not None:
        given += [(path, args.seed) for path in SEED_KEYS]
    for path, value in given:
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _run_job(cfg: JobConfig, name: str) -> dict[str, Any]:
    if not cfg.ray.address:
        loopback_ray()  # before streamlearn.job imports ray
    from streamlearn.job import Job

    job = Job(cfg, lambda msg: _log(f"{name}: {msg}"), handle_signals=True)
    try:
        summary = job.run()
    except KafkaSetupError as exc:
        raise CliError(str(exc)) from exc
    if cfg.source == "embedded":  # the simulator knows the true labels of a held-out set: score the model on it
        summary.update(heldout_summary(cfg, job.weights))
    _log(f"{name}: stopped ({summary['stop_reason']}): {summary['events_consumed']} records, "
         f"{summary['model_examples_positive']}+/{summary['model_examples_negative']}- examples in the model, "
         f"progressive accuracy {summary['progressive_accuracy']}, {summary['events_per_second']} records/s")
    return summary


def cmd_run(args: argparse.Namespace) -> int:
    overrides = job_overrides(args)
    overrides["source"] = "kafka"
    cfg = config.load(getattr(args, "config", None), overrides)
    _emit(_run_job(cfg, "run"))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from streamlearn.predict import load_model, predict_lines

    learner, schema, info = load_model(args.checkpoint_dir)
    _log(f"predict: model version {info['version']} from {info['checkpoint']}")
    for out in predict_lines(learner, schema, sys.stdin):
        _emit(out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    overrides = job_overrides(args)
    overrides["source"] = "embedded"
    cfg = config.load(getattr(args, "config", None), overrides)
    _log(f"demo: {cfg.sim.events} predictions from a {cfg.sim.policy} policy on {cfg.data.dataset}, "
         f"{cfg.workers} worker(s) on {cfg.partitions} partitions, ps {cfg.ps.mode} x{cfg.ps.shards}, "
         f"objective {cfg.objective.name}")
    _emit(_run_job(cfg, "demo"))
    return 0


def eval_config(args: argparse.Namespace, objective: str, guard_default: str) -> EvalConfig:
    """Built through :func:`config.build`, so a flag is checked as the same key in a config file would be."""
    data, sim = stream_configs(args)
    model = config.build(ModelConfig, {"kind": args.model, "hidden": args.hidden, "buckets": args.buckets,
                                       "seed": args.seed}, "model")
    optim = config.build(OptimConfig, {"name": args.optimizer, "lr": args.lr, "batch_size": args.batch_size}, "optim")
    return EvalConfig(data=data, sim=sim, model=model, optim=optim,
                      objective=config.build(Objective, {"name": objective, "negative_weight": args.negative_weight},
                                             "objective"),
                      divergence=DivergenceConfig(guard=args.guard or guard_default))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _emit(summary: dict[str, Any]) -> None:
    print(json.dumps(summary), flush=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    names = OBJECTIVES if args.objective == "all" else (args.objective,)
    configs = [eval_config(args, name, "none") for name in names]  # validate all before running any
    results = [evaluate(cfg, _log) for cfg in configs]
    for r in results:
        _emit(r)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streamlearn.kafka_source import create_topics, describe_topics

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
    """The simulated stream's configs from the ``_add_stream`` flags (plus ``--seed``), built and checked by
    :func:`config.build` as the ``data`` and ``sim`` sections of a config file are."""
    over = job_overrides(args)
    data = config.build(DataConfig, {**over.get("data", {}), "n_features": args.n_features, "n_classes": args.classes},
                        "data")
    sim = config.build(SimConfig, over.get("sim", {}), "sim")
    return data, sim


def cmd_produce(args: argparse.Namespace) -> int:
    from streamlearn.kafka_source import produce_stream
    from streamlearn.simulate import Simulator

    settings = kafka_settings(args)
    if args.rate is not None and not (math.isfinite(args.rate) and args.rate > 0):
        raise CliError(f"--rate: must be a finite number > 0 events/s, got {args.rate}")
    data, sim = stream_configs(args)
    _log(f"produce: {sim.events} predictions ({data.dataset}, {sim.policy} policy) to "
         f"{settings.predictions_topic} and {settings.feedback_topic} at {settings.bootstrap_servers}, "
         f"codec {args.codec}")
    start = time.perf_counter()
    try:
        counts = produce_stream(settings, Simulator(sim, data).events(), codec=args.codec, rate=args.rate,
                                pack=args.pack)
    except KafkaSetupError as exc:
        raise CliError(str(exc)) from exc
    seconds = time.perf_counter() - start
    events = counts["predictions"] + counts["feedback"]
    _emit({**counts, "codec": args.codec, "seconds": round(seconds, 3),
           "events_per_second": round(events / seconds, 1) if seconds > 0 else None})
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from streamlearn.report import report

    _emit(report(args.history, args.out))
    return 0


COMMANDS = {"evaluate": cmd_evaluate, "demo": cmd_demo, "run": cmd_run, "predict": cmd_predict, "topics": cmd_topics,
            "produce": cmd_produce, "report": cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    torch.set_num_threads(1)  # micro-batches are tiny: threads cost more than they give
    tune_gc()  # evaluate and predict learn in this process
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (CliError, ValueError) as exc:
        print(f"streamlearn: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or socket the command could not open: one line, not a traceback
        print(f"streamlearn: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
