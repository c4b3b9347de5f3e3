"""Where modules live while they work: the one device context every pass and evaluation uses.

The model's home is the CPU; a decoder layer, the trunk, or (for evaluation and the gradient
pass, which need all of it) the whole model visits the compute device for the duration of a
`with on_device(...)` block and goes home after it, also when the block fails.
"""
from contextlib import contextmanager

import torch
from torch import nn

HOME = torch.device("cpu")


@contextmanager
def on_device(modules: nn.Module | list[nn.Module], device: torch.device):
    modules = modules if isinstance(modules, (list, tuple)) else [modules]
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m in modules:
            m.to(HOME)
