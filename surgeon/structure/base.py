"""What every structure answers. A structure owns its groups (elements, N:M groups, rows and
columns, attention units and FFN neurons), prices them from a linear's Kronecker factors, selects
the cheapest under a scope, and removes them with the method's update rule:

    targets -> costs -> select (layer | row | global) -> remove (none | correlated)

or, where the update chooses as it goes (`method.update=obs`: SparseGPT's sweep, SlimGPT's greedy
removal), `solve` does both per decoder layer. Nothing outside structure/ asks which structure it
has; the method only composes these calls (surgeon/method/prune.py).
"""
import math
from dataclasses import dataclass

import torch
from torch import nn

SCOPES = ("layer", "row", "global")


@dataclass
class Target:
    """What one decision prunes: linear `name` of decoder layer `layer` (for unit structures, the
    linear that reads the units, with the adapter's `units`; for rows_cols, the layer's channels)."""
    layer: int
    name: str
    linear: nn.Linear
    units: object = None


class Structure:
    name = ""
    needs_data = False      # True: the structure observes the calibration pass itself (`statistics`)
    period = None          # column pattern: a sequential sweep picks masks this many columns at a time
    fixed_sparsity = False  # True: the pattern fixes every layer's sparsity (N:M)
    compactable = False     # True: removes whole units, which compaction takes out of the shapes
    semi_structured = False  # True: leaves every group of 4 inputs with 2 zeros (sparse tensor cores)
    layer_ratios = True     # False: every layer must get the same ratio (no per-layer allocation)

    @property
    def label(self) -> str:
        """The structure as results and tables name it."""
        return self.name

    def check(self, adapter) -> None:
        """The model's shapes fit the structure (after the model loads, before any work)."""

    def check_method(self, update: str, scope: str, gradients: bool) -> None:
        """The method's update rule and allocation scope work with this structure."""

    def target(self, sparsity: float) -> float:
        return sparsity

    def targets(self, adapter, index: int, layer) -> list[Target]:
        """Every prunable linear of the layer, decided on its own weights."""
        return [Target(index, name, lin) for name, lin in adapter.prunable_linears(layer).items()]

    def statistics(self, adapter, index: int, layer) -> dict:
        """{(index, key): object} the structure observes in decoder layer `index` besides the
        curvature of its targets: objects whose `hooks()` attach them to the calibration pass."""
        return {}

    def decide(self, targets: list[Target], factors, stats: dict, sparsity, opts, update: str) -> dict:
        """Prunes `targets` (of every decoder layer decided together); returns record fields by
        (layer, name). `factors(target)` gives a target's Kronecker factors (one input's at a time)."""
        extras = {}
        if self.solves(update):  # a decoder layer at a time, choosing as it goes
            for i in sorted({t.layer for t in targets}):
                solved = self.solve([t for t in targets if t.layer == i], factors, sparsity, opts, update)
                extras.update({(i, name): e for name, e in solved.items()})
            return extras
        # two passes keep memory at one linear's inverses: all costs first (all a global
        # threshold needs), then each linear's factors again, one at a time, to update
        costs = [self.costs(weight(t, f), f) for t in targets for f in [factors(t)]]
        decisions = self.select(costs, sparsity, opts.allocation)
        del costs
        for t, decision in zip(targets, decisions):
            f = factors(t)
            W, extras[(t.layer, t.name)] = self.remove(weight(t, f), decision, f, update, opts, sparsity)
            write_back(t.linear, W)
        return extras

    def solves(self, update: str) -> bool:
        """Whether `update` selects as it goes (then `solve` prunes a decoder layer at a time)."""
        return update == "obs"

    def costs(self, W: torch.Tensor, kron):
        raise NotImplementedError

    def select(self, costs: list, sparsity: float, scope: str) -> list:
        raise NotImplementedError

    def remove(self, W: torch.Tensor, decision, kron, update: str, opts, sparsity: float) -> tuple[torch.Tensor, dict]:
        """(W without the decided groups, record fields)."""
        raise NotImplementedError

    def solve(self, targets: list[Target], factors, sparsity: float, opts, update: str) -> dict:
        """Selects and updates as it goes; returns record fields by linear name."""
        raise NotImplementedError


def cheapest(costs: list[torch.Tensor], fraction: float, scope: str) -> list[torch.Tensor]:
    """Boolean masks marking the `fraction` cheapest entries: of each tensor (layer), of each row
    of each tensor (row), or of all tensors together (global)."""
    if scope == "row":
        masks = []
        for c in costs:
            mask, k = torch.zeros_like(c, dtype=torch.bool), int(c.shape[1] * fraction)
            if k:
                mask.scatter_(1, torch.topk(c, k, dim=1, largest=False).indices, True)
            masks.append(mask)
        return masks
    if scope == "layer":
        return [cheapest([c], fraction, "global")[0] for c in costs]
    n = sum(c.numel() for c in costs)
    k = min(int(fraction * n), n)
    if not k:
        return [torch.zeros_like(c, dtype=torch.bool) for c in costs]
    t = kth_smallest(costs, k)
    masks = [c < t for c in costs]
    ties = k - sum(int(m.sum()) for m in masks)  # entries equal to t that still go, first ones first
    for c, m in zip(costs, masks):
        if ties <= 0:
            break
        at = (c == t).flatten().nonzero().flatten()[:ties]
        m.view(-1)[at] = True
        ties -= at.numel()
    return masks


def kth_smallest(costs: list[torch.Tensor], k: int, sample: int = 1 << 20):
    """The k-th smallest entry (1-based) of all tensors together, without joining them: a global
    threshold over a 7B model's costs would otherwise copy them all at once and sort half of
    them. A seeded sample of the entries brackets the k-th (its quantiles k/n -+ a margin of
    4 standard errors); one pass counts the entries below the bracket and gathers those inside,
    and the k-th is found among those. A bracket that missed (rare) is widened and the pass
    repeated, until it holds every entry. Exact whatever the sample drew."""
    n = sum(c.numel() for c in costs)
    if n <= sample:  # a join no larger than the sample (one layer's costs): select in it directly
        return torch.cat([c.flatten().to(costs[0].device) for c in costs]).kthvalue(k).values
    g = torch.Generator().manual_seed(0)
    drawn = torch.cat([c.flatten()[torch.randint(c.numel(), (max(1, round(sample * c.numel() / n)),),
                                                  generator=g).to(c.device)].to(costs[0].device) for c in costs])
    margin = 4 / math.sqrt(drawn.numel())
    while True:
        low, high = k / n - margin, k / n + margin
        lo = drawn.kthvalue(max(1, int(low * drawn.numel()))).values if low > 0 else None
        hi = drawn.kthvalue(min(drawn.numel(), int(high * drawn.numel()) + 1)).values if high < 1 else None
        below, inside = 0, []
        for c in costs:
            keep = torch.ones_like(c, dtype=torch.bool) if lo is None else c >= lo
            below += c.numel() - int(keep.sum())
            inside.append(c[keep & (c <= hi)] if hi is not None else c[keep])
        inside = torch.cat([x.to(costs[0].device) for x in inside])
        if below < k <= below + inside.numel():
            return inside.kthvalue(k - below).values
        margin *= 4


def weight(target, kron) -> torch.Tensor:
    """The weight as the factors price it: in their precision (at least float32), with the bias
    column last where A has one."""
    W = target.linear.weight.data.to(kron.dtype)
    if kron.bias:
        W = torch.cat([W, target.linear.bias.data.to(kron.dtype).unsqueeze(1)], dim=1)
    return W


def write_back(lin, W) -> None:
    C = lin.in_features
    lin.weight.data.copy_(W[:, :C].to(lin.weight.dtype))
    if W.shape[1] > C:
        lin.bias.data.copy_(W[:, C].to(lin.bias.dtype))
