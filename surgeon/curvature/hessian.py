"""`curvature=hessian`: the layer-wise Hessian of OBS / SparseGPT, H = (2/n) sum_t x_t x_t^T.

It is the exact Hessian of the layer's reconstruction error ||W X - W' X||^2 / n, so OBS updates
built on it are the least-squares optimal corrections of the remaining weights. As Kronecker
factors: G = I, A = H, damped by `damp` x mean(diag H). q/k/v (and gate/up) share one H.
"""
import torch

from surgeon.curvature.base import DTYPES, Curvature, add_gram, non_negative, one_of, symmetric
from surgeon.curvature.kron import Factor, Kron


class Hessian(Curvature):
    @classmethod
    def check(cls, cfg):
        non_negative(cfg, "damp")
        one_of(cfg, "dtype", DTYPES)

    def __init__(self, linears, cfg):
        super().__init__(linears, cfg)
        self._H = torch.zeros(self.in_features, self.in_features, dtype=getattr(torch, cfg.dtype),
                              device=self.device)

    def add_batch(self, inp):
        x = self.flat(inp).to(self._H.dtype)
        k = x.shape[0]
        # a running mean keeps H at the scale of one token whatever the calibration size
        self._H *= self.tokens / (self.tokens + k)
        self.tokens += k
        x = x * (2.0 / self.tokens) ** 0.5
        add_gram(self._H, x)  # the upper triangle only: `H` mirrors it

    @property
    def H(self) -> torch.Tensor:
        return symmetric(self._H)

    def factors(self, name):
        return Kron(Factor(None), self.input_factor(None, lambda: Factor(self.H, float(self.cfg.damp))))
