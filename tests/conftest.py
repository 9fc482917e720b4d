"""Shared test setup: a local Ray that listens on loopback only, as `streamlearn run` starts it (set before any
test module imports ray)."""

from streamlearn.cli import loopback_ray

loopback_ray()
