"""The curvature interface: statistics of the prunable linears that read one input, fed like
SparseGPT's `add_batch`.

Linears that read the same input (q/k/v; gate/up) share one object, so the input statistics
(the layer Hessian, K-FAC's A, activation second moments) are accumulated once, not per linear;
statistics of a linear's own output gradient (K-FAC's G, Fisher diagonals) are kept per member.
`factors(name)` gives a member's damped Kronecker factors (surgeon/curvature/kron.py), from which
every structure prices its groups and every update rule solves.

A backend class also says, before any model is loaded, whether its options are valid (`check`),
whether it needs calibration data and whether it needs gradients.
"""
import math
import os
import tempfile

import torch
from torch import nn

from surgeon.config import fisher_kind
from surgeon.curvature.kron import Factor, Kron
from surgeon.errors import SurgeonError

STORES = ("device", "cpu", "disk")
DTYPES = ("float32", "float64")  # curvature.dtype: the precision of statistics, inverses and solves


def add_gram(total: torch.Tensor, x: torch.Tensor) -> None:
    """total += x^T x, upper block triangle only: the product is symmetric, so blocks below the
    diagonal repeat those above, and skipping them saves close to half the multiplies (torch has
    no syrk). Column blocks of n/8 (at least 128) keep each product large enough to run at full
    speed. Read the sum through `symmetric`: what lies below the diagonal blocks is stale."""
    n = x.shape[1]
    block = max(128, -(-n // 8))
    for i in range(0, n, block):
        if total.device == x.device:
            total[i:i + block, i:].addmm_(x[:, i:i + block].T, x[:, i:])
        else:  # statistics kept away from the accelerator: multiply there, add here
            total[i:i + block, i:].add_((x[:, i:i + block].T @ x[:, i:]).to(total.device))


def symmetric(total: torch.Tensor) -> torch.Tensor:
    """The full matrix of a sum that `add_gram` fed: its upper triangle mirrored."""
    return torch.triu(total) + torch.triu(total, 1).T


def one_of(cfg, key: str, allowed) -> None:
    if cfg[key] not in allowed:
        raise SurgeonError(f"curvature.{key} '{cfg[key]}' is not one of {', '.join(map(str, allowed))}")


def non_negative(cfg, *keys: str) -> None:
    for key in keys:
        if float(cfg[key]) < 0:
            raise SurgeonError(f"curvature.{key} must be >= 0, got {cfg[key]}")


class Curvature:
    needs_data = True  # False: costs come from the weights alone, skip the calibration pass
    # True: can also hold statistics of output gradients, with the options store, damp, damp_g,
    # fisher and chunk (windows whose layer inputs the gradient pass keeps at once)
    gradient_stats = False

    @classmethod
    def check(cls, cfg) -> None:
        """Every option this backend reads is valid (called when the run plan is built)."""
        if cls.gradient_stats:
            one_of(cfg, "store", STORES)
            non_negative(cfg, "damp", "damp_g")
            fisher_kind(cfg)
            if int(cfg.chunk) < 1:
                raise SurgeonError(f"curvature.chunk must be positive, got {cfg.chunk}")
            one_of(cfg, "gradient_pass", ("auto", "layerwise", "whole"))
            if not isinstance(cfg.time_floor, bool):
                raise SurgeonError(f"curvature.time_floor must be true or false, got {cfg.time_floor}")

    @classmethod
    def uses_gradients(cls, cfg) -> bool:
        """True: a forward+backward pass of the full model must feed add_grad."""
        return False

    @classmethod
    def labels(cls, cfg) -> str:
        """Which labels the gradients use: the true next tokens (empirical Fisher), or tokens
        sampled from the model's softmax ("true" Fisher)."""
        return fisher_kind(cfg) if cls.gradient_stats else "empirical"

    @classmethod
    def kronecker(cls, cfg) -> bool:
        """Whether the factors are Kronecker (updates need them), not only an exact diagonal."""
        return True

    def __init__(self, linears: dict[str, nn.Linear], cfg):
        self.cfg = cfg
        self.linears = linears
        first = next(iter(linears.values()))
        self.in_features = first.in_features
        self.device = first.weight.device
        self.tokens = 0
        self._input = None  # (key, Factor): the damped input factor the members share, once made

    def input_factor(self, key, make) -> Factor:
        """The damped input-side factor, made once for all members (its inverse too, once asked)."""
        if self._input is None or self._input[0] != key:
            self._input = (key, make())
        return self._input[1]

    def release(self) -> None:
        """Forget the input factor (and inverse): decisions over many linears hold one at a time."""
        self._input = None

    def buffer(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A zeroed statistics buffer where `cfg.store` says: on the linears' device,
        in CPU memory, or in a memory-mapped file under $TMPDIR (disk: the page cache holds what
        fits and the kernel writes the rest out, so host memory stays bounded; the file is
        unlinked at once and vanishes with the tensor)."""
        if self.cfg.store == "device":
            return torch.zeros(*shape, dtype=dtype, device=self.device)
        if self.cfg.store == "cpu":
            return torch.zeros(*shape, dtype=dtype)
        fd, path = tempfile.mkstemp(prefix="surgeon-curvature-", suffix=".bin")
        os.close(fd)
        try:
            return torch.from_file(path, shared=True, size=math.prod(shape), dtype=dtype).view(*shape)
        finally:
            os.unlink(path)

    def add_batch(self, inp: torch.Tensor) -> None:
        """`inp`: the shared input, any leading shape, last dim `in_features`."""

    def add_grad(self, name: str, grad_out: torch.Tensor) -> None:
        """`grad_out`: the loss gradient w.r.t. member `name`'s output."""

    def factors(self, name: str) -> Kron:
        """Member `name`'s damped Kronecker factors."""
        raise NotImplementedError

    @staticmethod
    def flat(inp: torch.Tensor) -> torch.Tensor:
        return inp.reshape(-1, inp.shape[-1]).float()
