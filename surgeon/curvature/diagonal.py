"""`curvature=diagonal`: OBD-style diagonal curvature.

source=activations: diag(H) of the layer Hessian H = 2 E[x x^T], i.e. twice the second moment
of each input feature. Cost w_ij^2 * E[x_j^2] is L-OBD's; ranked per output row it orders
weights exactly as Wanda's |w_ij| * ||x_j||_2.
"""
import torch

from surgeon.curvature.base import Curvature


class Diagonal(Curvature):
    def __init__(self, linear, cfg):
        super().__init__(linear, cfg)
        if cfg.source != "activations":
            raise NotImplementedError(f"curvature.source={cfg.source} needs gradients (K-FAC)")
        self.sq = torch.zeros(linear.in_features, dtype=torch.float64, device=self.device)

    def add_batch(self, inp):
        x = self.flat(inp)
        self.sq += (x.double() ** 2).sum(0)
        self.tokens += x.shape[0]

    def diag(self) -> torch.Tensor:
        return (2 * self.sq / max(self.tokens, 1)).float()

    def matrix(self):
        return torch.diag(self.diag())

    def element_costs(self, weight):
        return weight.float() ** 2 * self.diag()
