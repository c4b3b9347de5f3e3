"""The curvature interface: one object per prunable linear, fed like SparseGPT's `add_batch`.

Every backend gives its estimate of the loss curvature of the linear's weight W (out x in) as
Kronecker factors F ~ G (x) A: G over outputs (None = identity), A over inputs. Costs and
updates are then one piece of math for all of them: OBS on diagonal factors is OBD, on
G = I and A = X X^T it is the layer-wise OBS of SparseGPT, and on K-FAC factors it is the
LLM Surgeon's. `matrix()` is the input-side factor alone, for SparseGPT's sequential update.
"""
import math
import os
import tempfile

import torch
from torch import nn

STORES = ("device", "cpu", "disk")


class Curvature:
    needs_data = True  # False: costs come from the weights alone, skip the calibration pass

    @classmethod
    def uses_gradients(cls, cfg) -> bool:
        """True: a forward+backward pass of the full model must feed add_grad."""
        return False

    def __init__(self, linear: nn.Linear, cfg):
        self.cfg = cfg
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.device = linear.weight.device
        self.tokens = 0

    def buffer(self, *shape: int) -> torch.Tensor:
        """A zeroed float32 statistics buffer where `cfg.store` says: on the linear's device,
        in CPU memory, or in a memory-mapped file under $TMPDIR (disk: the page cache holds what
        fits and the kernel writes the rest out, so host memory stays bounded; the file is
        unlinked at once and vanishes with the tensor)."""
        store = self.cfg.get("store", "device")
        if store not in STORES:
            raise ValueError(f"curvature.store must be one of {', '.join(STORES)}, got {store}")
        if store == "device":
            return torch.zeros(*shape, dtype=torch.float32, device=self.device)
        if store == "cpu":
            return torch.zeros(*shape, dtype=torch.float32)
        fd, path = tempfile.mkstemp(prefix="surgeon-curvature-", suffix=".f32")
        os.close(fd)
        try:
            return torch.from_file(path, shared=True, size=math.prod(shape), dtype=torch.float32).view(*shape)
        finally:
            os.unlink(path)

    def add_batch(self, inp: torch.Tensor) -> None:
        """`inp`: the linear's input, any leading shape, last dim `in_features`."""

    def add_grad(self, grad_out: torch.Tensor) -> None:
        """`grad_out`: the loss gradient w.r.t. the linear's output."""

    def matrix(self) -> torch.Tensor:
        raise NotImplementedError

    def factors(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(G, A), undamped; G None means identity."""
        return None, self.matrix()

    def fisher_diag(self) -> torch.Tensor | None:
        """An exact (out x in) diagonal of the Fisher, for curvatures that are not Kronecker."""
        return None

    def damped(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The input factor with dead inputs fixed (their weights are zeroed: they never
        matter) and relative damping `cfg.damp * mean(diag)` added, as SparseGPT does."""
        H = self.matrix().clone()
        dead = torch.diag(H) == 0
        if weight is not None:
            weight[:, dead] = 0
        return damp_(H, self.cfg.damp)

    def inverse(self, weight=None) -> torch.Tensor:
        return robust_cholesky_inverse(self.damped(weight))

    def damped_factors(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        G, A = self.factors()
        return (None if G is None else damp_(G.clone(), self.cfg.get("damp_g", self.cfg.damp)),
                damp_(A.clone(), self.cfg.get("damp_a", self.cfg.damp)))

    def element_costs(self, weight: torch.Tensor) -> torch.Tensor:
        """OBS saliency w_q^2 / [H^-1]_qq of removing each weight alone (factor 1/2 dropped)."""
        return weight.float() ** 2 / torch.diag(self.inverse()).unsqueeze(0)

    @staticmethod
    def flat(inp: torch.Tensor) -> torch.Tensor:
        return inp.reshape(-1, inp.shape[-1]).float()


def damp_(M: torch.Tensor, damp: float) -> torch.Tensor:
    """In place: dead directions get a unit diagonal, then damp * mean(diag) is added."""
    dead = torch.diag(M) == 0
    M[dead, dead] = 1.0
    M.diagonal().add_(damp * torch.mean(torch.diag(M)))
    return M


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
