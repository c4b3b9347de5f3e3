"""`curvature=diagonal`: OBD-style diagonal curvature, as Kronecker factors that are diagonal.

source=activations (L-OBD, Wanda): A = diag E[x_j^2], G = I. Cost w_ij^2 E[x_j^2]; ranked per
  output row it orders weights exactly as Wanda's |w_ij| * ||x_j||_2.
source=kfac (K-OBD): the diagonals of K-FAC's G and A (needs gradients).
OBS formulas on diagonal factors reduce to OBD: no correlation, no compensating update.
"""
import torch

from surgeon.curvature.base import Curvature

SOURCES = ("activations", "kfac")


class Diagonal(Curvature):
    @classmethod
    def uses_gradients(cls, cfg) -> bool:
        return cfg.source == "kfac"

    def __init__(self, linear, cfg):
        super().__init__(linear, cfg)
        if cfg.source not in SOURCES:
            raise ValueError(f"curvature.source must be one of {SOURCES}, got {cfg.source}")
        self.a2 = torch.zeros(self.in_features, dtype=torch.float64, device=self.device)
        self.g2 = torch.zeros(self.out_features, dtype=torch.float64, device=self.device)
        self.grad_tokens = 0

    def add_batch(self, inp):
        x = self.flat(inp)
        self.a2 += (x.double() ** 2).sum(0)
        self.tokens += x.shape[0]

    def add_grad(self, grad_out):
        g = self.flat(grad_out)
        self.g2 += (g.double() ** 2).sum(0)
        self.grad_tokens += g.shape[0]

    def diag(self) -> torch.Tensor:
        """Diagonal of the layer Hessian 2 E[x x^T]."""
        return (2 * self.a2 / max(self.tokens, 1)).float()

    def matrix(self):
        return torch.diag(self.diag())

    def factors(self):
        A = torch.diag(self.diag() / 2)  # E[x x^T], the Hessian's diagonal without its factor 2
        G = torch.diag((self.g2 / max(self.grad_tokens, 1)).float()) if self.uses_gradients(self.cfg) else None
        return G, A

    def element_costs(self, weight):
        return weight.float() ** 2 * self.diag()
