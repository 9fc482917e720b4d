"""``streamlearn ...`` commands.

Every command prints progress and logs on stderr and ends with one JSON line
on stdout (for ``evaluate --objective all``, one per objective), so scripts
read results with ``tail -n 1``. A bad flag value exits 2 with one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NoReturn

from streamlearn.divergence import GUARDS, DivergenceConfig
from streamlearn.evaluate import EvalConfig, evaluate
from streamlearn.learner import OPTIMIZERS, OptimConfig
from streamlearn.model import MODELS, ModelConfig
from streamlearn.objective import OBJECTIVES, Objective
from streamlearn.simulate import DATASETS, POLICIES, DataConfig, SimConfig


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


def _add_learning(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("learning")
    g.add_argument("--model", choices=MODELS, default="linear", help="softmax model (default linear)")
    g.add_argument("--hidden", type=_positive_int, default=64, help="mlp hidden units")
    g.add_argument("--buckets", type=_positive_int, default=1 << 18, help="hashed model buckets")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adagrad")
    g.add_argument("--lr", type=float, default=OptimConfig.lr, help="learning rate")
    g.add_argument("--batch-size", type=_positive_int, default=OptimConfig.batch_size, help="micro-batch size")
    g.add_argument("--negative-weight", type=float, default=None,
                   help="weight of the negative term (default 1/(K-1))")
    g.add_argument("--guard", choices=GUARDS, default=None, help="divergence guard")
    g.add_argument("--seed", type=int, default=0)


def _add_stream(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulated stream")
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamlearn", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ev = sub.add_parser("evaluate", help="compare objectives on the simulated stream (single process)")
    _add_stream(ev)
    _add_learning(ev)
    ev.add_argument("--objective", choices=(*OBJECTIVES, "all"), default="mixed")

    demo = sub.add_parser("demo", help="run the main job on the embedded stream, with progress")
    _add_stream(demo)
    _add_learning(demo)
    demo.add_argument("--objective", choices=OBJECTIVES, default="mixed")
    return parser


def eval_config(args: argparse.Namespace, objective: str, guard_default: str) -> EvalConfig:
    data = DataConfig(args.dataset, args.n_features, args.classes, args.noise, args.drift,
                      args.sparse_active, args.seed)
    sim = SimConfig(events=args.events, policy=args.policy, epsilon=args.epsilon,
                    judged_share=args.judged_share, label_share=args.label_share,
                    label_noise=args.label_noise, duplicate_share=args.duplicate_share,
                    out_of_order_share=args.out_of_order_share, delay_mean=args.delay_mean, seed=args.seed)
    model = ModelConfig(args.model, hidden=args.hidden, buckets=args.buckets, seed=args.seed)
    optim = OptimConfig(args.optimizer, args.lr, args.batch_size)
    return EvalConfig(data=data, sim=sim, model=model, optim=optim,
                      objective=Objective(objective, args.negative_weight),
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


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = eval_config(args, args.objective, "rollback")
    _log(f"demo: {cfg.sim.events} predictions from a {cfg.sim.policy} policy on {cfg.data.dataset}, "
         f"objective {cfg.objective.name}")
    summary = evaluate(cfg, _log)
    _log("demo: done: held-out accuracy {heldout_accuracy}, progressive accuracy {progressive_accuracy}, "
         "{examples} examples, {events_per_second} events/s".format(**summary))
    _emit(summary)
    return 0


COMMANDS = {"evaluate": cmd_evaluate, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (CliError, ValueError) as exc:
        print(f"streamlearn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
