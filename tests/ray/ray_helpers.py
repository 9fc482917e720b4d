"""Shared pieces of the Ray tier: job configs and the single-process reference run."""

from collections import Counter

from streamlearn.config import JobConfig, load
from streamlearn.evaluate import heldout_summary
from streamlearn.ingest import Ingest
from streamlearn.learner import Learner
from streamlearn.simulate import Simulator
from streamlearn.source import MemorySource
from streamlearn.trainer import Trainer


def job_config(**over) -> JobConfig:
    base = {"source": "embedded", "sim": {"events": 4000}, "divergence": {"guard": "none"}}
    for k, v in over.items():
        if isinstance(v, dict):
            base.setdefault(k, {}).update(v)  # type: ignore[union-attr]
        else:
            base[k] = v
    return load(None, base, env={})


def single_process(cfg: JobConfig) -> tuple[Trainer, Counter]:
    """The reference: the same records, in the same order, through one Trainer."""
    learner = Learner(cfg.model, cfg.objective, cfg.optim)
    trainer = Trainer(learner, cfg.divergence)
    ingest = Ingest(cfg.schema, cfg.join)
    source = MemorySource(Simulator(cfg.sim, cfg.data).events(block=64), cfg.partitions, codec=cfg.codec)
    per_partition: Counter = Counter()
    while not source.exhausted:
        examples = ingest.process(source.next_batch(cfg.max_records)).examples
        per_partition.update(e.partition for e in examples)
        trainer.feed(examples)
    trainer.flush()
    return trainer, per_partition


def heldout_accuracy(cfg: JobConfig, job) -> float:
    """The held-out accuracy of a finished job's model (what `streamlearn demo` reports)."""
    return heldout_summary(cfg, job.weights)["heldout_accuracy"]
