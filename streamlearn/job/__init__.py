"""A distributed job: Ray actors on co-partitioned partitions, parameter-server shards, checkpoints, metrics.

The driver (:class:`Job`) only schedules, checkpoints and reports; its parts
each live in their own module: the record budget (:mod:`.budget`), the stop
conditions (:mod:`.stop`), the checkpointer (:mod:`.checkpointer`,
:mod:`.regroup`), the guard (:mod:`.guard`), the summary (:mod:`.summary`),
the loop (:mod:`.loop`) and the actors behind one interface (:mod:`.fleet`;
on Ray: :mod:`.ray_fleet`). Building a worker is :mod:`streamlearn.build`.
"""

from streamlearn.build import assign, build_source, build_worker, kafka_settings
from streamlearn.job.driver import Job, install_signal_handlers
from streamlearn.job.fleet import ActorLost, Fleet
from streamlearn.job.loop import Hooks
from streamlearn.job.summary import Totals

__all__ = ["ActorLost", "Fleet", "Hooks", "Job", "Totals", "assign", "build_source", "build_worker",
           "install_signal_handlers", "kafka_settings"]
