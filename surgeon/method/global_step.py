"""One pruning step over the whole model at once, from Kronecker-factored costs.

Used whenever costs must be compared across layers (`method.allocation=global`), curvature
comes from gradients (K-FAC), or the update is LLM Surgeon's correlated one. Each linear's
weight is augmented with its bias column when the curvature tracks the bias (K-FAC), so the
bias is updated too; the bias column itself is never pruned.

Two passes keep memory at one linear's inverses: the first computes every linear's costs
(all a global threshold needs), the second inverts again, one linear at a time, to update.
"""
import torch

from surgeon.method import allocation, kron
from surgeon.tracking.results import linear_record


def _augmented(lin, curv) -> torch.Tensor:
    W = lin.weight.data.float()
    if getattr(curv, "bias", False):
        W = torch.cat([W, lin.bias.data.float().unsqueeze(1)], dim=1)
    return W


def _write_back(lin, W) -> None:
    C = lin.in_features
    lin.weight.data.copy_(W[:, :C].to(lin.weight.dtype))
    if W.shape[1] > C:
        lin.bias.data.copy_(W[:, C].to(lin.bias.dtype))


def _costs(lin, curv, structured: bool):
    """Element costs (out x in), or (row costs, column costs) for rows_cols."""
    W, C = _augmented(lin, curv), lin.in_features
    F = curv.fisher_diag()
    if F is not None:  # exact diagonal: OBD, weights independent
        E = 0.5 * W[:, :C] ** 2 * F
        return (E.sum(1), E.sum(0)) if structured else E
    G, A = curv.damped_factors()
    Ginv, Ainv = kron.inverses(G, A)
    if structured:
        return kron.row_costs(W, Ginv, A), kron.col_costs(W, G, Ainv)[:C]
    return kron.element_costs(W, Ginv, Ainv)[:, :C]


@torch.no_grad()
def prune_global(linears: dict, curvs: dict, method, sparsity: float) -> list[dict]:
    """`linears` and `curvs` are keyed alike ((layer index, name) -> module / curvature)."""
    keys = list(linears)
    structure, scope = method.structure, method.cfg.allocation
    structured = structure.name == "rows_cols"
    costs = [_costs(linears[k], curvs[k], structured) for k in keys]
    if structured:
        decisions = allocation.rows_cols([r for r, _ in costs], [c for _, c in costs], sparsity, scope)
    elif structure.name == "nm":
        decisions = allocation.nm_groups(costs, sparsity, structure, scope)
    else:
        decisions = allocation.elements(costs, sparsity, scope)
    del costs
    correlate = int(method.cfg.get("max_correlate", 0))
    update = method.cfg["update"] == "correlated"
    out = []
    for key, decision in zip(keys, decisions):
        lin, curv = linears[key], curvs[key]
        W, C = _augmented(lin, curv), lin.in_features
        if update:
            Ginv, Ainv = kron.inverses(*curv.damped_factors())
        rec = {}
        if structured:
            rows, cols = decision
            if update:
                W = kron.rows_update(W, Ginv, rows, correlate)
                W = kron.cols_update(W, Ainv, cols, correlate)
            W[rows, :] = 0.0
            W[:, cols] = 0.0
            rec = {"rows_removed": len(rows), "cols_removed": len(cols)}
        else:
            if update and getattr(structure, "select_by", "costs") == "sequential" \
                    and structure.completes(sparsity):
                decision = structure.sequential(W[:, :C], Ainv[:C, :C])  # A^-1's block: bias last
            if update:
                # Earlier shots' zeros cost 0, so they are in the decision, and they stay in the
                # constraint set: the update G^-1 M A^-1 is dense, and left free it would move them,
                # and re-zeroing them after the update would undo part of its compensation.
                rows, cols = decision.nonzero(as_tuple=True)
                W = kron.correlated_update(W, Ginv, Ainv, rows, cols, correlate)
            W[:, :C][decision] = 0.0
        _write_back(lin, W)
        out.append(linear_record(key[0], key[1], lin.weight, **rec))
    return out
