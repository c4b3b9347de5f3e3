"""`structure=unstructured`: any single weight may go.

Removing weight w_rc alone costs (OBS on F ~ G (x) A, surgeon/curvature/kron.py)
    L_rc = 1/2 w_rc^2 / ([G^-1]_rr [A^-1]_cc),
which is magnitude for F = I, OBD for diagonal factors ([F^-1]_ii = 1 / F_ii, read without
inverting), SparseGPT's saliency for G = I, A = H and LLM Surgeon's for K-FAC. The cheapest go:
per matrix (`method.allocation=layer`), per output row (`row`: Wanda's comparison group), or
under one threshold over the whole model (`global`). Updates: none; `correlated`, the joint
Kronecker OBS solve for every removed weight (surgeon/update/correlated.py); `obs`, SparseGPT's
sequential sweep, which picks masks a block at a time as it updates (surgeon/update/obs.py).
"""
import torch

from surgeon.errors import SurgeonError
from surgeon.structure.base import Structure, cheapest
from surgeon.update.correlated import correlated_update
from surgeon.update.obs import obs_prune


class Unstructured(Structure):
    name = "unstructured"

    def check_method(self, update, scope, gradients):
        if update == "obs" and (scope == "global" or gradients):
            raise SurgeonError("method.update=obs (SparseGPT's sequential OBS) needs per-layer allocation "
                               "(method.allocation=layer|row) and a curvature without gradients")

    def costs(self, W, kron):
        """L_rc for the weight columns (a bias column, last in W, is never removed)."""
        C = W.shape[1] - int(kron.bias)
        if kron.exact is not None:
            return 0.5 * W[:, :C] ** 2 * kron.exact
        if kron.diagonal:
            return 0.5 * W[:, :C] ** 2 * torch.outer(kron.G.diag(W.shape[0], W), kron.A.diag(C, W))
        return (0.5 * W ** 2 / torch.outer(kron.G.inv_diag(W.shape[0], W), kron.A.inv_diag(W.shape[1], W)))[:, :C]

    def select(self, costs, sparsity, scope):
        """Masks of the weights to remove (already-zero weights cost 0, so they stay removed)."""
        return cheapest(costs, sparsity, scope)

    def remove(self, W, mask, kron, update, opts, sparsity):
        if update == "correlated":
            # Earlier shots' zeros cost 0, so they are in the mask, and they stay in the
            # constraint set: the update G^-1 M A^-1 is dense, and left free it would move them,
            # and re-zeroing them after the update would undo part of its compensation.
            rows, cols = mask.nonzero(as_tuple=True)
            W = correlated_update(W, kron.Ginv(W), kron.Ainv(W), rows, cols, int(opts.max_correlate),
                                   int(opts.solve_batch), kron.A_inverted(W))
        W[:, :mask.shape[1]][mask] = 0.0
        return W, {}

    def solve(self, targets, factors, sparsity, opts, update):
        """SparseGPT: each linear by the sequential sweep on its layer Hessian."""
        for t in targets:
            kron, W = factors(t), t.linear.weight.data
            if kron.dead is not None and not kron.dead.all():
                W[:, kron.dead] = 0  # inputs that never fired: their weights never matter (unless none
                # fired: an expert no calibration token reached is pruned by magnitude, H = I)
            new, _ = obs_prune(W, kron.Ainv(W), self, sparsity, opts.allocation, int(opts.blocksize))
            W.copy_(new)
        return {}
