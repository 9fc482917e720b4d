"""Shared test setup: single-threaded torch (tiny tensors; the cores are shared with servers), and a local
Ray that listens on loopback only, as `streamlearn run` starts it (set before any test module imports ray)."""

import torch

from streamlearn.cli import loopback_ray

torch.set_num_threads(1)
loopback_ray()
