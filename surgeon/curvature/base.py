"""The curvature interface: one object per prunable linear, fed like SparseGPT's `add_batch`.

A curvature estimate answers what removing weights costs in loss. Every backend exposes its
estimate of the layer Hessian H (in_features x in_features, for the loss ||W X - W' X||^2 / n)
so that any ranking or OBS update composes with any curvature: OBS on a diagonal H is OBD, on
H = I it is magnitude pruning.
"""
import torch
from torch import nn


class Curvature:
    needs_data = True     # False: costs come from the weights alone, skip the calibration pass

    def __init__(self, linear: nn.Linear, cfg):
        self.cfg = cfg
        self.in_features = linear.in_features
        self.device = linear.weight.device
        self.tokens = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        """`inp`: the linear's input, any leading shape, last dim `in_features`."""

    def matrix(self) -> torch.Tensor:
        raise NotImplementedError

    def damped(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """H with dead inputs fixed (their weights are zeroed: they never matter) and relative
        damping `cfg.damp * mean(diag H)` added, as SparseGPT does."""
        H = self.matrix().clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1.0
        if weight is not None:
            weight[:, dead] = 0
        H.diagonal().add_(self.cfg.damp * torch.mean(torch.diag(H)))
        return H

    def inverse(self, weight=None) -> torch.Tensor:
        return robust_cholesky_inverse(self.damped(weight))

    def element_costs(self, weight: torch.Tensor) -> torch.Tensor:
        """OBS saliency w_q^2 / [H^-1]_qq of removing each weight alone (factor 1/2 dropped)."""
        return weight.float() ** 2 / torch.diag(self.inverse()).unsqueeze(0)

    @staticmethod
    def flat(inp: torch.Tensor) -> torch.Tensor:
        return inp.reshape(-1, inp.shape[-1]).float()


def robust_cholesky_inverse(H: torch.Tensor, tries: int = 6) -> torch.Tensor:
    """Inverse of an SPD matrix; damping grows tenfold per failed Cholesky instead of NaN."""
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    extra, scale = 0.0, torch.mean(torch.diag(H)).item()
    for _ in range(tries):
        L, info = torch.linalg.cholesky_ex(H + extra * eye)
        if info.item() == 0:
            return torch.cholesky_inverse(L)
        extra = scale * 1e-2 if extra == 0 else extra * 10
    raise FloatingPointError("curvature matrix is not positive definite even after strong damping")
