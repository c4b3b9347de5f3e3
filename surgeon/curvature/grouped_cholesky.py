"""`curvature=grouped_cholesky`: the layer Hessian H = (2/n) X X^T, scored per group of columns.

Removing a group Q of input columns of W (a head's or KV group's columns of o_proj, a neuron's
column of down_proj) and re-fitting the rest by OBS costs
    E_Q = tr(W_Q [H^-1]_QQ^-1 W_Q^T) = ||W_Q L_Q^-T||_F^2,   [H^-1]_QQ = L_Q L_Q^T.
The diagonal blocks of H^-1 for all groups are factored in one batched Cholesky, so every head
is scored at once (SlimGPT's grouped Cholesky). The same formula scores groups under any
curvature's inverse: diagonal H gives OBD (sum of w^2 h_jj), H = I the squared norm.
"""
import torch

from surgeon.curvature.hessian import Hessian


class GroupedCholesky(Hessian):
    """Statistics are the layer Hessian's; what differs is how groups are scored."""


def group_costs(W: torch.Tensor, Hinv: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """`groups`: (n_groups, group_size) column indices. Returns E_Q for every group."""
    blocks = Hinv[groups.unsqueeze(2), groups.unsqueeze(1)]               # (g, s, s)
    L, info = torch.linalg.cholesky_ex(blocks)
    if info.any():  # a numerically indefinite block: symmetric solve instead
        X = torch.linalg.solve(blocks, W[:, groups].permute(1, 2, 0))      # (g, s, rows)
        return (W[:, groups].permute(1, 2, 0) * X).sum((1, 2))
    Wg = W[:, groups].permute(1, 0, 2)                                      # (g, rows, s)
    Z = torch.linalg.solve_triangular(L, Wg.transpose(1, 2), upper=False)  # L^-1 W_Q^T
    return (Z ** 2).sum((1, 2))
