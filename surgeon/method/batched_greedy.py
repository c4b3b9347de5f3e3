"""Structured OBS for heads and FFN neurons, one decoder layer at a time (SlimGPT).

The decisions live on the input columns of the layer's output linears: o_proj (one group of
columns per attention unit) and down_proj / fc2 (one column per neuron). Batched Greedy Pruning:
score every remaining group under the current inverse Hessian (grouped Cholesky, one batched
factorization), remove the `b` cheapest together with the joint OBS update of the remaining
columns, condition H^-1 on their removal, repeat. b = 1 is plain greedy OBS. Attention units
go `head_batch` at a time; FFN neurons in batches that shrink as pruning proceeds (Dynamic Group
Size: `ffn_group_size`, halved each batch down to `ffn_min_group_size`), because early choices
are the safe ones and the last ones need fresh scores. With `method.update=none` (magnitude and
Wanda-style baselines) costs never change and no weight is updated.

The producers of removed columns (q/k/v rows of a unit, gate/up/fc1 rows of a neuron) are
zeroed too, so compaction (surgeon/compact.py) can drop them.
"""
import torch

from surgeon.compact import zero_rows
from surgeon.curvature.grouped_cholesky import group_costs


def batched_greedy(W, Hinv, groups, n_remove: int, batches, update: bool):
    """Removes `n_remove` of `groups` ((n, s) column indices) from W. Returns (W, removed ids)."""
    W, Hinv = W.clone().float(), Hinv.clone().float()
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


@torch.no_grad()
def prune_layer(adapter, layer, curvs: dict, ratio: float, cfg) -> dict[str, dict]:
    """Prunes one decoder layer to `ratio` of its prunable parameters. `curvs`: linear name ->
    curvature. Returns extra per-linear record fields (units removed)."""
    linears = adapter.prunable_linears(layer)
    name_of = {id(m): n for n, m in linears.items()}
    att, mlp = adapter.attention(layer), adapter.mlp(layer)
    update = cfg["update"] == "obs"
    hidden = att.o.out_features
    rep, hd = att.num_heads // att.num_kv_heads, att.head_dim

    # the budget: whole attention units (at least one kept), FFN neurons make up the rest
    total = sum(lin.weight.numel() for lin in linears.values())
    unit_params = hidden * hd * (2 * rep + 2)
    neuron_params = hidden * (len(mlp.inputs) + 1)
    n_units = min(att.num_kv_heads - 1, round(ratio * att.num_kv_heads))
    n_neurons = round((ratio * total - n_units * unit_params) / neuron_params)
    n_neurons = max(0, min(mlp.output.in_features - 1, n_neurons))

    out = {}
    o_curv = curvs[name_of[id(att.o)]]
    groups = torch.arange(att.num_heads * hd).view(att.num_kv_heads, rep * hd)
    W, units = batched_greedy(att.o.weight.data, o_curv.inverse(att.o.weight.data), groups, n_units,
                              constant(int(cfg.get("head_batch", 1))), update)
    att.o.weight.data.copy_(W.to(att.o.weight.dtype))
    if units:
        zero_rows(att.q, groups[units].flatten())
        kv_rows = torch.arange(att.num_kv_heads * hd).view(att.num_kv_heads, hd)[units].flatten()
        zero_rows(att.k, kv_rows)
        zero_rows(att.v, kv_rows)
    out[name_of[id(att.o)]] = {"units_removed": sorted(units)}

    d_curv = curvs[name_of[id(mlp.output)]]
    cols = torch.arange(mlp.output.in_features).view(-1, 1)
    W, neurons = batched_greedy(mlp.output.weight.data, d_curv.inverse(mlp.output.weight.data), cols, n_neurons,
                                shrinking(int(cfg.get("ffn_group_size", 128)), int(cfg.get("ffn_min_group_size", 8))),
                                update)
    mlp.output.weight.data.copy_(W.to(mlp.output.weight.dtype))
    for lin in mlp.inputs:
        zero_rows(lin, torch.tensor(neurons, dtype=torch.long))
    out[name_of[id(mlp.output)]] = {"neurons_removed": len(neurons)}
    return out
