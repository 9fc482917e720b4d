"""The parameter exchange, in one folder.

- :mod:`~streamlearn.ps.state`: model state as plain arrays, the one SGD/Adagrad step, flat and row views
- :mod:`~streamlearn.ps.layout`: which rows each shard holds
- :mod:`~streamlearn.ps.wire`: what a push and its reply carry, as bytes
- :mod:`~streamlearn.ps.shard`: a server shard (versions, staleness, sync rounds)
- :mod:`~streamlearn.ps.client`: how a worker reaches the shards (in process or Ray)
- :mod:`~streamlearn.ps.exchange`: a worker's pushes in flight and what it credits
- :mod:`~streamlearn.ps.replica`: how replies and pulls merge into a worker's replica
"""

from streamlearn.ps.config import PS_MODES, STALE_POLICIES, PSConfig
from streamlearn.ps.layout import merge
from streamlearn.ps.wire import PushResult, combine

__all__ = ["PS_MODES", "STALE_POLICIES", "PSConfig", "PushResult", "combine", "merge"]
