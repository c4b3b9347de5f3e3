"""How much each linear loses: one global threshold over the whole model (LLM Surgeon), or the
same fraction in every linear (`method.allocation=layer`), for comparison.

All functions take per-linear costs and return per-linear decisions that remove exactly the
parameter budget (up to rounding): int(sparsity * prunable parameters).
"""
import torch


def _smallest(costs: list[torch.Tensor], fraction: float, scope: str) -> list[torch.Tensor]:
    """Boolean masks marking the `fraction` cheapest entries, over all tensors or per tensor."""
    if scope != "global":
        return [_smallest([c], fraction, "global")[0] for c in costs]
    flat = torch.cat([c.flatten() for c in costs])
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    k = min(int(fraction * flat.numel()), flat.numel())
    if k:
        chosen[torch.topk(flat, k, largest=False).indices] = True
    return [m.view_as(c) for m, c in zip(chosen.split([c.numel() for c in costs]), costs)]


def elements(costs: list[torch.Tensor], sparsity: float, scope: str) -> list[torch.Tensor]:
    """Unstructured: remove the cheapest weights (already-zero weights cost 0, so they stay)."""
    return _smallest(costs, sparsity, scope)


def nm_groups(costs: list[torch.Tensor], sparsity: float, nm, scope: str) -> list[torch.Tensor]:
    """N:M: a group of M's cost is the sum of its M-N cheapest weights (independence, as the
    paper assumes); the cheapest groups are made N:M until the budget is reached. With
    fill=elements a shot short of the pattern removes single weights instead, only among each
    group's M-N cheapest (already-zero weights cost 0, so they stay among them)."""
    n, m = nm.n, nm.m  # nm: the structure (surgeon/structure/nm.py)
    groups = [c.reshape(c.shape[0], -1, m) for c in costs]
    drop = [torch.topk(g, m - n, dim=2, largest=False) for g in groups]
    if nm.fill == "elements" and not nm.completes(sparsity):
        allowed = [torch.full_like(g, float("inf")).scatter_(2, d.indices, d.values).reshape(c.shape)
                   for g, d, c in zip(groups, drop, costs)]
        return _smallest(allowed, sparsity, scope)
    group_costs = [d.values.sum(2) for d in drop]
    chosen = _smallest(group_costs, min(1.0, sparsity / (1 - n / m)), scope)
    masks = []
    for g, d, ch in zip(groups, drop, chosen):
        mask = torch.zeros_like(g, dtype=torch.bool).scatter_(2, d.indices, True) & ch.unsqueeze(2)
        masks.append(mask.reshape(g.shape[0], -1))
    return masks


def rows_cols(row_costs: list[torch.Tensor], col_costs: list[torch.Tensor], sparsity: float,
              scope: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rows and columns below one threshold are removed; a linear losing r of R rows and c of C
    columns loses r*C + c*R - r*c weights (the overlap counted once). The threshold is the
    largest cost at which the total stays within the budget. Returns (rows, cols) indices."""
    if scope != "global":
        return [rows_cols([r], [c], sparsity, "global")[0] for r, c in zip(row_costs, col_costs)]
    sorted_r = [torch.sort(r).values for r in row_costs]
    sorted_c = [torch.sort(c).values for c in col_costs]
    shapes = [(len(r), len(c)) for r, c in zip(row_costs, col_costs)]
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
        return [(r.new_zeros(0, dtype=torch.long), c.new_zeros(0, dtype=torch.long))
                for r, c in zip(row_costs, col_costs)]
    tau = candidates[lo]
    return [(torch.nonzero(r <= tau).flatten(), torch.nonzero(c <= tau).flatten())
            for r, c in zip(row_costs, col_costs)]
