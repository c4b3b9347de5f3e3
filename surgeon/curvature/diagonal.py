"""`curvature=diagonal`: OBD-style diagonal curvature.

source=activations (L-OBD, Wanda): A = diag E[x_j^2], G = I. Cost w_ij^2 E[x_j^2]; ranked per
  output row it orders weights exactly as Wanda's |w_ij| * ||x_j||_2.
source=kfac (K-OBD): the diagonals of K-FAC's G and A (needs gradients), F_ij ~ E[g_i^2] E[a_j^2].
source=fisher: the exact diagonal of the empirical Fisher with calibration windows as samples,
  F_ij = E_window[(dL/dW_ij)^2]; not a Kronecker product, so it is given as `fisher_diag()`.
OBS formulas on diagonal curvature reduce to OBD: no correlation, no compensating update.
"""
import torch

from surgeon.curvature.base import Curvature

SOURCES = ("activations", "kfac", "fisher")


class Diagonal(Curvature):
    @classmethod
    def uses_gradients(cls, cfg) -> bool:
        return cfg.source in ("kfac", "fisher")

    def __init__(self, linear, cfg):
        super().__init__(linear, cfg)
        if cfg.source not in SOURCES:
            raise ValueError(f"curvature.source must be one of {SOURCES}, got {cfg.source}")
        self.a2 = torch.zeros(self.in_features, dtype=torch.float64, device=self.device)
        self.g2 = torch.zeros(self.out_features, dtype=torch.float64, device=self.device)
        self.grad_tokens = 0
        if cfg.source == "fisher":
            self.F_sum = self.buffer(self.out_features, self.in_features)
            self.windows = 0
            self._inputs = []  # this window's input, until its gradient arrives

    def add_batch(self, inp):
        x = self.flat(inp)
        self.a2 += (x.double() ** 2).sum(0)
        self.tokens += x.shape[0]
        if self.cfg.source == "fisher":
            self._inputs.append(x)

    def add_grad(self, grad_out):
        g = self.flat(grad_out)
        self.g2 += (g.double() ** 2).sum(0)
        self.grad_tokens += g.shape[0]
        if self.cfg.source == "fisher":  # backward visits calls in reverse order of the forward
            dW = g.T @ self._inputs.pop()   # this window's weight gradient
            self.F_sum.add_((dW ** 2).to(self.F_sum.device))
            self.windows += 1

    def diag(self) -> torch.Tensor:
        """Diagonal of the layer Hessian 2 E[x x^T]."""
        return (2 * self.a2 / max(self.tokens, 1)).float()

    def fisher_diag(self) -> torch.Tensor | None:
        """F_ij = E_window[(dL/dW_ij)^2] (source=fisher), else None."""
        if self.cfg.source != "fisher":
            return None
        return self.F_sum.to(self.device) / max(self.windows, 1)

    def matrix(self):
        return torch.diag(self.diag())

    def factors(self):
        A = torch.diag(self.diag() / 2)  # E[x x^T], the Hessian's diagonal without its factor 2
        G = torch.diag((self.g2 / max(self.grad_tokens, 1)).float()) if self.uses_gradients(self.cfg) else None
        return G, A

    def element_costs(self, weight):
        F = self.fisher_diag()
        return weight.float() ** 2 * (self.diag() if F is None else F)
