"""Where modules live while they work: the one device context every pass and evaluation uses.

The model's home is the CPU; a decoder layer, the trunk, or (for evaluation and training, which
need all of it) the whole model visits the compute device for the duration of a
`with on_device(...)` block and goes home after it, also when the block fails.

The context also keeps account: `RESIDENT` counts the bytes of model parameters inside such
blocks - what is on the compute device - now and at the peak (each parameter once, however the
blocks nest), so a run can report, and a test can check, that a layer-by-layer pass holds one
layer (plus the trunk) and never the model.
"""
from contextlib import contextmanager

import torch
from torch import nn

HOME = torch.device("cpu")


class Residency:
    def __init__(self):
        self.held: dict[int, list] = {}  # id(parameter) -> [bytes, how many open blocks hold it]
        self.current = self.peak = 0

    def reset(self) -> None:
        self.held, self.current, self.peak = {}, 0, 0

    def enter(self, params) -> None:
        for p in params:
            entry = self.held.setdefault(id(p), [p.numel() * p.element_size(), 0])
            entry[1] += 1
            if entry[1] == 1:
                self.current += entry[0]
        self.peak = max(self.peak, self.current)

    def leave(self, params) -> None:
        for p in params:
            entry = self.held[id(p)]
            entry[1] -= 1
            if entry[1] == 0:
                self.current -= entry[0]
                del self.held[id(p)]


RESIDENT = Residency()


@contextmanager
def on_device(modules: nn.Module | list[nn.Module], device: torch.device):
    modules = modules if isinstance(modules, (list, tuple)) else [modules]
    params = list({id(p): p for m in modules for p in m.parameters()}.values())
    for m in modules:
        m.to(device)
    RESIDENT.enter(params)
    try:
        yield
    finally:
        RESIDENT.leave(params)
        for m in modules:
            m.to(HOME)
