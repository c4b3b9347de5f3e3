"""One pruning step over the whole model at once, from Kronecker-factored costs.

Used whenever costs must be compared across layers (`method.allocation=global`), curvature
comes from gradients (K-FAC), or the update is LLM Surgeon's correlated one. Each linear's
weight is augmented with its bias column when the curvature tracks the bias (K-FAC), so the
bias is updated too; the bias column itself is never pruned.
"""
import torch

from surgeon.method import allocation, kron


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


@torch.no_grad()
def prune_global(linears: dict, curvs: dict, method, sparsity: float) -> list[dict]:
    """`linears` and `curvs` are keyed alike ((layer index, name) -> module / curvature)."""
    keys = list(linears)
    items = {}
    for key in keys:
        lin, curv = linears[key], curvs[key]
        G, A = curv.damped_factors()
        Ginv, Ainv = kron.inverses(G, A)
        items[key] = (_augmented(lin, curv), G, A, Ginv, Ainv)
    structure, scope = method.structure, method.cfg.allocation
    correlate = int(method.cfg.get("max_correlate", 0))
    update = method.cfg["update"] == "correlated"
    records = []
    if structure.name == "rows_cols":
        rc = [(kron.row_costs(W, Ginv, A), kron.col_costs(W, G, Ainv)[: linears[k].in_features])
              for k, (W, G, A, Ginv, Ainv) in items.items()]
        decisions = allocation.rows_cols([r for r, _ in rc], [c for _, c in rc], sparsity, scope)
        for key, (rows, cols) in zip(keys, decisions):
            W, G, A, Ginv, Ainv = items[key]
            if update:
                W = kron.rows_update(W, Ginv, rows, correlate)
                W = kron.cols_update(W, Ainv, cols, correlate)
            W[rows, :] = 0.0
            W[:, cols] = 0.0
            _write_back(linears[key], W)
            records.append({"rows_removed": len(rows), "cols_removed": len(cols)})
    else:
        costs = [kron.element_costs(W, Ginv, Ainv)[:, : linears[k].in_features]
                 for k, (W, G, A, Ginv, Ainv) in items.items()]
        if structure.name == "nm":
            masks = allocation.nm_groups(costs, sparsity, structure.n, structure.m, scope)
        else:
            masks = allocation.elements(costs, sparsity, scope)
        for key, mask in zip(keys, masks):
            W, G, A, Ginv, Ainv = items[key]
            C = linears[key].in_features
            if update:
                rows, cols = (mask & (W[:, :C] != 0)).nonzero(as_tuple=True)  # zeros need no update
                W = kron.correlated_update(W, Ginv, Ainv, rows, cols, correlate)
            W[:, :C][mask] = 0.0
            _write_back(linears[key], W)
            records.append({})
    out = []
    for key, rec in zip(keys, records):
        w = linears[key].weight
        out.append({"layer": key[0], "name": key[1], "numel": w.numel(),
                    "sparsity": (w == 0).float().mean().item(), **rec})
    return out
