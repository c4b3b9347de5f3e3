"""`structure=rows_cols`: whole rows (output features) and columns (input features) of every
weight matrix, as LLM Surgeon's structured pruning.

Removing row r alone costs (OBS on F ~ G (x) A, Q the row's weights)
    L_r = 1/2 w_r^T A w_r / [G^-1]_rr,   and column c:   L_c = 1/2 w_c^T G w_c / [A^-1]_cc
(diagonal factors give OBD; an exact diagonal Fisher sums 1/2 w^2 F over the row or column).
Rows and columns compete under one threshold: a matrix losing r of R rows and c of C columns
loses rC + cR - rc weights (the overlap counted once), and the threshold is the largest cost at
which the total stays within the budget - per matrix (`method.allocation=layer`) or over the
whole model (`global`). A removed row takes its bias with it. Updates: none, or `correlated`, the
closed forms for whole rows and columns (surgeon/update/correlated.py).
"""
import torch

from surgeon.errors import SurgeonError
from surgeon.structure.base import Structure
from surgeon.update.correlated import cols_update, rows_update


class RowsCols(Structure):
    name = "rows_cols"

    def check_method(self, update, scope, gradients):
        if update == "obs":
            raise SurgeonError("method.update=obs (SparseGPT's sequential OBS) needs an unstructured, N:M or "
                               "heads_neurons structure; rows_cols takes method.update=correlated|none")
        if scope == "row":
            raise SurgeonError("method.allocation=row ranks weights within rows; use layer or global for rows_cols")

    def costs(self, W, kron):
        """(row costs, column costs) of the weight columns (a bias column, last in W, goes with its row)."""
        C = W.shape[1] - int(kron.bias)
        if kron.exact is not None:
            E = 0.5 * W[:, :C] ** 2 * kron.exact
            return E.sum(1), E.sum(0)
        rows = 0.5 * (kron.A.rmatmul(W) * W).sum(1) / kron.G.inv_diag(W.shape[0], W)
        cols = 0.5 * (kron.G.matmul(W) * W).sum(0) / kron.A.inv_diag(W.shape[1], W)
        return rows, cols[:C]

    def select(self, costs, sparsity, scope):
        """(rows, cols) indices per matrix: everything at or below the threshold."""
        if scope != "global":
            return [self.select([rc], sparsity, "global")[0] for rc in costs]
        sorted_r = [torch.sort(r).values for r, _ in costs]
        sorted_c = [torch.sort(c).values for _, c in costs]
        shapes = [(len(r), len(c)) for r, c in costs]
        budget = int(sparsity * sum(R * C for R, C in shapes))

        def removed(tau) -> int:
            total = 0
            for sr, sc, (R, C) in zip(sorted_r, sorted_c, shapes):
                nr = int(torch.searchsorted(sr, tau, right=True))
                nc = int(torch.searchsorted(sc, tau, right=True))
                total += nr * C + nc * R - nr * nc
            return total

        candidates = torch.sort(torch.cat([*sorted_r, *sorted_c])).values
        lo, hi = -1, len(candidates) - 1  # invariant: removed(candidates[lo]) <= budget (lo=-1: none)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if removed(candidates[mid]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        if lo < 0:
            return [(r.new_zeros(0, dtype=torch.long), c.new_zeros(0, dtype=torch.long)) for r, c in costs]
        tau = candidates[lo]
        return [(torch.nonzero(r <= tau).flatten(), torch.nonzero(c <= tau).flatten()) for r, c in costs]

    def remove(self, W, decision, kron, update, opts, sparsity):
        rows, cols = decision
        if update == "correlated":
            W = rows_update(W, kron.Ginv(W), rows, int(opts.max_correlate))
            W = cols_update(W, kron.Ainv(W), cols, int(opts.max_correlate))
        W[rows, :] = 0.0
        W[:, cols] = 0.0
        return W, {"rows_removed": len(rows), "cols_removed": len(cols)}
