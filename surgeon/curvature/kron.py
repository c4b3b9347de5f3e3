"""Kronecker-factored curvature of one linear: F ~ G (x) A over its weight W (R x C), augmented
with the bias column [W | b] where the curvature tracks the bias (K-FAC).

Every curvature is given in this form, so costs and updates are one piece of math (the structure
files and surgeon/update/): G over outputs, A over inputs, each a full matrix, a diagonal (a
vector) or the identity (None). The layer Hessian of OBS / SparseGPT is G = I, A = H; OBD's
diagonals are diagonal G and A; K-FAC's are full. An exact diagonal Fisher, which no Kronecker
product gives, is carried as `exact` (R x C) instead.

Damping (`damp_`) is relative to the factor's mean diagonal, as SparseGPT's: directions that never
fired (zero diagonal) get a unit diagonal first, so the factor is invertible.
"""
import torch


def damp_(M: torch.Tensor, damp: float) -> torch.Tensor:
    """In place, on a matrix or a diagonal: dead directions get 1, then damp * mean(diag) is added."""
    d = M if M.dim() == 1 else M.diagonal()  # a view: writes reach M
    d[d == 0] = 1.0
    d.add_(damp * torch.mean(M if M.dim() == 1 else torch.diag(M)))  # the mean of a copy: same sum order as before
    return M


def robust_cholesky_inverse_(H: torch.Tensor, tries: int = 6) -> torch.Tensor:
    """Inverse of an SPD matrix; damping grows tenfold per failed Cholesky instead of NaN. The
    damping it took is added to H in place, so H stays the matrix its inverse inverts (the
    kept-set solve of surgeon/update/correlated.py uses both)."""
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    extra, scale = 0.0, torch.mean(torch.diag(H)).item()
    for _ in range(tries):
        L, info = torch.linalg.cholesky_ex(H + extra * eye)
        if info.item() == 0:
            if extra:
                H.diagonal().add_(extra)
            # LAPACK hands back column-major storage; the updates gather rows of the inverse per
            # removed set, which is ~20x slower across strides (the same values, laid out by row)
            return torch.cholesky_inverse(L).contiguous()
        extra = scale * 1e-2 if extra == 0 else extra * 10
    raise FloatingPointError("curvature matrix is not positive definite even after strong damping")


class Factor:
    """One side of a Kronecker product: a full SPD matrix, a diagonal, or the identity (None),
    damped; `dead`: directions that never fired (zero diagonal before damping)."""

    def __init__(self, M: torch.Tensor | None, damp: float = 0.0):
        self.dead = None if M is None else (M.diagonal() if M.dim() == 2 else M) == 0
        self.M = None if M is None else damp_(M.clone(), damp)
        self._inv = None

    @property
    def full(self) -> bool:
        return self.M is not None and self.M.dim() == 2

    def diag(self, n: int, like: torch.Tensor) -> torch.Tensor:
        if self.M is None:
            return torch.ones(n, dtype=like.dtype, device=like.device)
        return self.M.diagonal() if self.full else self.M

    def inverse(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """The inverse as a full matrix (computed once)."""
        if self._inv is None:
            if self.M is None:
                self._inv = torch.eye(n, dtype=like.dtype, device=like.device)
            else:
                self._inv = robust_cholesky_inverse_(self.M) if self.full else torch.diag(1.0 / self.M)
        return self._inv

    def inv_diag(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """diag(F^-1): for a diagonal factor exactly 1 / F_ii, with no inversion."""
        return self.inverse(n, like).diagonal() if self.full else 1.0 / self.diag(n, like)

    def matmul(self, X: torch.Tensor) -> torch.Tensor:
        """F @ X."""
        if self.M is None:
            return X
        return self.M @ X if self.full else self.M.unsqueeze(1) * X

    def rmatmul(self, X: torch.Tensor) -> torch.Tensor:
        """X @ F."""
        if self.M is None:
            return X
        return X @ self.M if self.full else X * self.M


class Kron:
    """Damped F ~ G (x) A of one linear (`G`, `A`: Factors); `bias`: A (and the weight it prices)
    has the bias column last; `exact`: an exact diagonal instead of the factors."""

    def __init__(self, G: Factor, A: Factor, bias: bool = False, exact=None):
        self.G, self.A, self.bias, self.exact = G, A, bias, exact

    @classmethod
    def of(cls, G, A, damp_g: float = 0.0, damp_a: float = 0.0, bias: bool = False) -> "Kron":
        """From matrices, vectors or None."""
        return cls(Factor(G, damp_g), Factor(A, damp_a), bias)

    @property
    def dtype(self) -> torch.dtype:
        """The precision costs and updates are computed in: float32, or the factors' if wider."""
        ms = [m for m in (self.G.M, self.A.M, self.exact) if m is not None]
        return torch.promote_types(ms[0].dtype, torch.float32) if ms else torch.float32

    @property
    def dead(self) -> torch.Tensor | None:
        """Inputs that never fired: their weights never matter."""
        return self.A.dead

    @property
    def diagonal(self) -> bool:
        """Both sides diagonal (or identity): OBD, no weight is correlated with another."""
        return not (self.G.full or self.A.full)

    def Ginv(self, W) -> torch.Tensor | None:
        """G^-1 for W's rows, None for the identity (the update formulas skip it)."""
        return None if self.G.M is None else self.G.inverse(W.shape[0], W)

    def Ainv(self, W) -> torch.Tensor:
        """A^-1 for W's columns, as a matrix."""
        return self.A.inverse(W.shape[1], W)

    def A_inverted(self, W) -> torch.Tensor | None:
        """The full A that Ainv inverts (with any damping the inversion had to add), None unless A is full."""
        if not self.A.full:
            return None
        self.A.inverse(W.shape[1], W)
        return self.A.M
