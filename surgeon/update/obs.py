"""`method.update=obs`: Optimal Brain Surgeon with the inverse Hessian re-conditioned as weights
go, layer by layer on H = 2/n X X^T (G = I). Two sweeps, one per kind of group:

Sequential elimination of columns (SparseGPT; elements and N:M groups). With U the upper
Cholesky factor of H^-1, removing the weights of column i leaves the error e = (w_i - q_i) / U_ii,
and the least-squares optimal correction of all later columns is W[:, i:] -= e U[i, i:] (the
rows of U are the OBS update directions under the sequential elimination order). Masks are
chosen lazily, a block (or an N:M group) at a time, by the structure, from the costs
w^2 / U_ii^2 of the weights as they are at that moment. Updates are applied inside a block at
once and to the rest of the matrix per block.

Batched greedy removal of column groups (SlimGPT; heads and FFN neurons). Removing a group Q of
columns and re-fitting the rest costs
    E_Q = tr(W_Q [H^-1]_QQ^-1 W_Q^T) = ||W_Q L_Q^-T||_F^2,   [H^-1]_QQ = L_Q L_Q^T,
all groups scored at once by one batched Cholesky of the diagonal blocks of H^-1 (grouped
Cholesky). Each step removes the `b` cheapest together with the joint OBS update of the remaining
columns, W -= W_Q S^-1 [H^-1]_Q,: (S = [H^-1]_QQ), conditions H^-1 on their removal and scores
again. b = 1 is plain greedy OBS; batches may shrink as pruning proceeds (Dynamic Group Size).
Without updates (`method.update=none`) costs never change and no weight moves.
"""
import torch


def obs_prune(weight: torch.Tensor, hinv: torch.Tensor, structure, sparsity: float,
              scope: str = "layer", blocksize: int = 128,
              keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (pruned and updated weight, boolean mask of removed weights). `structure` picks
    each block's masks (`select`, `period`); `keep` marks weights that are removed whatever they
    cost (a multi-shot run's earlier zeros)."""
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
                removed[:, b0 + i:b0 + j] = structure.select([costs], sparsity, scope)[0]
            w = Wb[:, i]
            q = w.masked_fill(removed[:, b0 + i], 0.0)
            err = (w - q) / Ub[i, i]
            Wb[:, i:] -= err.unsqueeze(1) * Ub[i, i:].unsqueeze(0)
            Wb[:, i] = q  # exact zeros, not w - w rounding
            errors[:, i] = err
        W[:, b0:b1] = Wb
        W[:, b1:] -= errors @ U[b0:b1, b1:]
    return W.to(weight.dtype), removed


def group_costs(W: torch.Tensor, Hinv: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """E_Q for every group; `groups`: (n_groups, group_size) column indices."""
    blocks = Hinv[groups.unsqueeze(2), groups.unsqueeze(1)]               # (g, s, s)
    L, info = torch.linalg.cholesky_ex(blocks)
    if info.any():  # a numerically indefinite block: symmetric solve instead
        X = torch.linalg.solve(blocks, W[:, groups].permute(1, 2, 0))      # (g, s, rows)
        return (W[:, groups].permute(1, 2, 0) * X).sum((1, 2))
    Wg = W[:, groups].permute(1, 0, 2)                                      # (g, rows, s)
    Z = torch.linalg.solve_triangular(L, Wg.transpose(1, 2), upper=False)  # L^-1 W_Q^T
    return (Z ** 2).sum((1, 2))


def batched_greedy(W, Hinv, groups, n_remove: int, batches, update: bool):
    """Removes `n_remove` of `groups` ((n, s) column indices) from W. Returns (W, removed ids)."""
    dtype = torch.promote_types(Hinv.dtype, torch.float32)  # float64 where `curvature.dtype` asks
    W, Hinv = W.clone().to(dtype), Hinv.clone().to(dtype)
    alive = torch.ones(len(groups), dtype=torch.bool)
    removed: list[int] = []
    for b in batches:
        if len(removed) >= n_remove:
            break
        idx = alive.nonzero().flatten()
        costs = group_costs(W, Hinv, groups[idx])
        pick = idx[torch.topk(costs, min(b, n_remove - len(removed)), largest=False).indices]
        Q = groups[pick].flatten()
        if update:
            S = Hinv[Q][:, Q]
            W -= torch.linalg.solve(S, W[:, Q].T).T @ Hinv[Q, :]   # W_Q S^-1 [H^-1]_Q,:
            Hinv -= Hinv[:, Q] @ torch.linalg.solve(S, Hinv[Q, :])  # H^-1 given Q removed
        W[:, Q] = 0.0
        alive[pick] = False
        removed += pick.tolist()
    if removed:  # conditioning leaves ~1e-9 in H^-1 rows of removed columns: re-zero them exactly
        W[:, groups[removed].flatten()] = 0.0
    return W, removed


def constant(b: int):
    while True:
        yield b


def shrinking(first: int, smallest: int):
    b = max(first, smallest)
    while True:
        yield b
        b = max(smallest, b // 2)
