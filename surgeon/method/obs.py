"""`method.update=obs`: SparseGPT's sequential Optimal Brain Surgeon update.

Columns are eliminated left to right. With U the upper Cholesky factor of H^-1, removing the
weights of column i leaves the error e = (w_i - q_i) / U_ii, and the least-squares optimal
correction of all later columns is W[:, i:] -= e U[i, i:] (the rows of U are the OBS update
directions under the sequential elimination order). Masks are chosen lazily, a block (or an
N:M group) at a time, from the costs w^2 / U_ii^2 of the weights as they are at that moment.
Updates are applied inside a block at once and to the rest of the matrix per block.
"""
import torch


def obs_prune(weight: torch.Tensor, hinv: torch.Tensor, structure, sparsity: float,
              scope: str = "layer", blocksize: int = 128,
              keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (pruned and updated weight, boolean mask of removed weights). `keep` marks weights
    that are removed whatever they cost (a multi-shot run's earlier zeros)."""
    W = weight.to(hinv.dtype).clone()  # float32 in runs; float64 in tests
    rows, cols = W.shape
    U = torch.linalg.cholesky(hinv, upper=True)
    d = torch.diag(U)
    removed = torch.zeros_like(W, dtype=torch.bool)
    period = structure.period or blocksize
    if blocksize % period:
        raise ValueError(f"blocksize {blocksize} must be a multiple of the structure period {period}")
    for b0 in range(0, cols, blocksize):
        b1 = min(b0 + blocksize, cols)
        Wb, Ub = W[:, b0:b1].clone(), U[b0:b1, b0:b1]
        errors = torch.zeros_like(Wb)
        for i in range(b1 - b0):
            if i % period == 0:
                j = min(i + period, b1 - b0)
                costs = Wb[:, i:j] ** 2 / d[b0 + i:b0 + j] ** 2
                if keep is not None:
                    costs = costs.masked_fill(keep[:, b0 + i:b0 + j], -1.0)
                removed[:, b0 + i:b0 + j] = structure.select(costs, sparsity, scope)
            w = Wb[:, i]
            q = w.masked_fill(removed[:, b0 + i], 0.0)
            err = (w - q) / Ub[i, i]
            Wb[:, i:] -= err.unsqueeze(1) * Ub[i, i:].unsqueeze(0)
            Wb[:, i] = q  # exact zeros, not w - w rounding
            errors[:, i] = err
        W[:, b0:b1] = Wb
        W[:, b1:] -= errors @ U[b0:b1, b1:]
    return W.to(weight.dtype), removed
