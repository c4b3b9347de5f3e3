"""`curvature=diagonal`: OBD-style diagonal curvature.

source=activations (L-OBD, Wanda): A = diag E[x_j^2], G = I. Cost 1/2 w_ij^2 E[x_j^2]; ranked per
  output row it orders weights exactly as Wanda's |w_ij| * ||x_j||_2 (Wanda's preset sets damp 0).
source=kfac (K-OBD): the diagonals of K-FAC's G and A (needs gradients), F_ij ~ E[g_i^2] E[a_j^2].
source=fisher: the exact diagonal of the Fisher with calibration windows as samples,
  F_ij = E_window[(dL/dW_ij)^2]; not a Kronecker product, so it is carried as `exact`.
`fisher` (empirical | true) picks the labels of the gradients, as for K-FAC. `damp` damps A,
`damp_g` damps G, relative to their mean. OBS on diagonal curvature is OBD: no correlation.
"""
import torch

from surgeon.curvature.base import Curvature, one_of
from surgeon.curvature.kron import Factor, Kron

SOURCES = ("activations", "kfac", "fisher")


class Diagonal(Curvature):
    gradient_stats = True

    @classmethod
    def check(cls, cfg):
        one_of(cfg, "source", SOURCES)
        super().check(cfg)

    @classmethod
    def uses_gradients(cls, cfg) -> bool:
        return cfg.source in ("kfac", "fisher")

    @classmethod
    def kronecker(cls, cfg) -> bool:
        return cfg.source != "fisher"

    def __init__(self, linears, cfg):
        super().__init__(linears, cfg)
        self.a2 = torch.zeros(self.in_features, dtype=torch.float64, device=self.device)
        self.g2 = {n: torch.zeros(lin.out_features, dtype=torch.float64, device=self.device)
                   for n, lin in linears.items()}
        self.grad_tokens = dict.fromkeys(linears, 0)
        if cfg.source == "fisher":
            self.F_sum = {n: self.buffer(lin.out_features, lin.in_features) for n, lin in linears.items()}
            self.windows = dict.fromkeys(linears, 0)
            self._x = None  # this window's input, until every member's gradient has arrived

    def add_batch(self, inp):
        x = self.flat(inp)
        self.a2 += (x.double() ** 2).sum(0)
        self.tokens += x.shape[0]
        if self.cfg.source == "fisher":
            self._x = x

    def add_grad(self, name, grad_out):
        g = self.flat(grad_out)
        self.g2[name] += (g.double() ** 2).sum(0)
        self.grad_tokens[name] += g.shape[0]
        if self.cfg.source == "fisher":  # one window per backward: its weight gradient, squared
            dW = g.T @ self._x
            self.F_sum[name].add_((dW ** 2).to(self.F_sum[name].device))
            self.windows[name] += 1

    def diag(self) -> torch.Tensor:
        """E[x_j^2] over the calibration tokens."""
        return (2 * self.a2 / max(self.tokens, 1)).float() / 2  # the rounding of 2 E[x^2], halved exactly

    def factors(self, name):
        if self.cfg.source == "fisher":
            exact = self.F_sum[name].to(self.device) / max(self.windows[name], 1)
            return Kron(Factor(None), Factor(None), exact=exact)
        G = (self.g2[name] / max(self.grad_tokens[name], 1)).float() if self.uses_gradients(self.cfg) else None
        return Kron(Factor(G, float(self.cfg.damp_g)),
                    self.input_factor(None, lambda: Factor(self.diag(), float(self.cfg.damp))))
