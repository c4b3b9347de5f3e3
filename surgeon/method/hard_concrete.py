"""Hard-concrete gates (Louizos, Welling & Kingma 2018), the L0 relaxation Compresso learns.

Each structure has a gate z in [0, 1]: a binary-concrete sample stretched to (LOW, HIGH) and
clipped, so z is exactly 0 or 1 with non-zero probability yet differentiable in log_alpha.
P(z != 0) has a closed form, which makes the expected model size (an L0 norm) differentiable.
"""
import math

import torch
from torch import nn

LOW, HIGH = -0.1, 1.1   # the stretch interval (gamma, zeta)
EPS = 1e-6
LOG_ALPHA_RANGE = (math.log(1e-2), math.log(1e2))  # kept finite so no gate is beyond recovery


class HardConcrete(nn.Module):
    """Gates of shape `shape`; the last dimension is one layer's (or the model's) structures."""

    def __init__(self, shape, init_drop: float = 0.01, temperature: float = 2 / 3):
        super().__init__()
        if not 0.0 < init_drop < 1.0:
            raise ValueError(f"init_drop must be in (0, 1), got {init_drop}")
        self.temperature = temperature
        mean = math.log(1 - init_drop) - math.log(init_drop)
        self.log_alpha = nn.Parameter(torch.full(shape, mean) + 0.01 * torch.randn(shape))

    def sample(self) -> torch.Tensor:
        """A training-time gate: reparameterised, so gradients reach log_alpha."""
        u = torch.rand_like(self.log_alpha).clamp(EPS, 1 - EPS)
        s = torch.sigmoid((u.log() - (1 - u).log() + self.log_alpha) / self.temperature)
        return (s * (HIGH - LOW) + LOW).clamp(0.0, 1.0)

    def prob_open(self) -> torch.Tensor:
        """P(z > 0) = 1 - CDF(0): the expected L0 norm, gate by gate."""
        return torch.sigmoid(self.log_alpha - self.temperature * math.log(-LOW / HIGH))

    @torch.no_grad()
    def deterministic(self, multiple: int = 1, binary: bool = False) -> torch.Tensor:
        """The test-time gate: in each row the expected number of open gates (rounded to a
        `multiple`) with the highest log_alpha stay, at the noise-free value clip(sigmoid(log_alpha)
        stretched) (1 for a confident gate), or exactly 1 if `binary`; the others are 0."""
        open_value = (torch.sigmoid(self.log_alpha) * (HIGH - LOW) + LOW).clamp(0.0, 1.0)
        if binary:  # exactly the kept count open (a noise-free value may itself be 0)
            open_value = torch.ones_like(open_value)
        n = self.log_alpha.shape[-1]
        kept = (self.prob_open().reshape(-1, n).sum(-1) / multiple).round().clamp(min=1) * multiple
        closed = (n - kept).clamp(min=0).long()
        z = open_value.reshape(-1, n).clone()
        order = self.log_alpha.reshape(-1, n).argsort(-1)
        for row in range(len(z)):
            z[row, order[row, : int(closed[row])]] = 0.0
        return z.reshape(self.log_alpha.shape)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.log_alpha.clamp_(*LOG_ALPHA_RANGE)
