"""The parameter exchange's settings, declared with the job's other settings (:mod:`streamlearn.config`)."""

from streamlearn.config.runtime import PS_MODES, STALE_POLICIES, PSConfig

__all__ = ["PS_MODES", "STALE_POLICIES", "PSConfig"]
