"""`curvature=hessian`: the layer-wise Hessian of OBS / SparseGPT, H = (2/n) sum_t x_t x_t^T.

It is the exact Hessian of the layer's reconstruction error ||W X - W' X||^2 / n, so OBS updates
built on it are the least-squares optimal corrections of the remaining weights.
"""
import torch

from surgeon.curvature.base import Curvature


class Hessian(Curvature):
    def __init__(self, linear, cfg):
        super().__init__(linear, cfg)
        self.H = torch.zeros(self.in_features, self.in_features, dtype=torch.float32, device=self.device)

    def add_batch(self, inp):
        x = self.flat(inp)
        k = x.shape[0]
        # a running mean keeps H at the scale of one token whatever the calibration size
        self.H *= self.tokens / (self.tokens + k)
        self.tokens += k
        x = x * (2.0 / self.tokens) ** 0.5
        self.H += x.T @ x

    def matrix(self):
        return self.H
