"""Shared test setup: single-threaded torch (tiny tensors; the cores are shared with servers)."""

import torch

torch.set_num_threads(1)
