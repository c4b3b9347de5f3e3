"""`structure=nm`: N:M semi-structured sparsity - at most N nonzeros in every M consecutive
weights along the input dimension (2:4 is what sparse tensor cores accelerate). Weights cost what
they cost unstructured; a group of M costs the sum of its M-N cheapest (independence, as the LLM
Surgeon assumes), and the cheapest groups are made N:M until the budget is reached.

A multi-shot schedule reaches the pattern through intermediate sparsities, and `fill` says how:
  groups:   each shot makes the cheapest whole groups N:M and leaves the rest dense (the LLM
            Surgeon reference); the last shot must then force every remaining, costliest group.
  elements: each shot removes the cheapest single weights, at most M-N per group (each group's
            cheapest), so the last shot only completes the groups that are still short;
  pattern:  each shot tightens the pattern of every group: a shot to sparsity s removes
            floor(s M) weights of every M, and one more in the groups whose next weight is
            cheapest until s is reached (2:4 over two shots: 3:4, then 2:4; over four: half the
            groups 3:4, all 3:4, half 2:4, all 2:4; 4:8 over four: 7:8, 6:8, 5:8, 4:8), so no
            shot forces the costliest groups all at once.
One-shot methods see only the final pattern, where the two agree.

`select` says how a correlated (K-FAC) step picks the weights of the shot that completes it:
  costs:      each group's M-N cheapest by the shot's costs, all chosen before any update (the
              paper);
  sequential: group by group along the input, each from the costs w^2 / U_cc^2 of the weights
              as the removals in earlier groups of the row left them (U: Cholesky of A^-1), as
              SparseGPT chooses its masks. Within a row K-FAC's costs rank weights by A alone,
              so this is OBS's greedy order; the correlated update then solves for that mask.
"""
import torch

from surgeon.errors import SurgeonError
from surgeon.structure.base import cheapest
from surgeon.structure.unstructured import Unstructured
from surgeon.update.obs import obs_prune

FILLS = ("groups", "elements", "pattern")
SELECTS = ("costs", "sequential")


class NM(Unstructured):
    name = "nm"
    fixed_sparsity = True

    def __init__(self, n: int, m: int, fill: str = "groups", select: str = "costs"):
        if not (0 < n < m):
            raise SurgeonError(f"structure=nm needs 0 < n < m, got n={n} m={m} (n counts the kept weights)")
        if fill not in FILLS:
            raise SurgeonError(f"structure.fill '{fill}' is not one of {', '.join(FILLS)}")
        if select not in SELECTS:
            raise SurgeonError(f"structure.select '{select}' is not one of {', '.join(SELECTS)}")
        self.n, self.m, self.fill, self.select_by = n, m, fill, select
        self.period = m  # masks are chosen M columns at a time
        self.semi_structured = m == 4 and n <= 2  # what torch's 2:4 kernels take

    @property
    def label(self) -> str:
        return f"{self.n}:{self.m}"

    def check(self, adapter):
        for layer in adapter.layers():
            for lin in adapter.prunable_linears(layer).values():
                if lin.in_features % self.m:
                    raise SurgeonError(f"structure=nm: m={self.m} does not divide a layer width of {lin.in_features}")

    def check_method(self, update, scope, gradients):
        super().check_method(update, scope, gradients)
        if self.select_by == "sequential" and update != "correlated":
            raise SurgeonError("structure.select=sequential picks N:M masks inside the correlated update: "
                               "it needs method.update=correlated (method.update=obs already selects so)")

    def target(self, sparsity: float) -> float:
        return 1 - self.n / self.m

    def completes(self, sparsity: float) -> bool:
        """Whether a shot to `sparsity` is the one that completes the pattern."""
        return sparsity >= self.target(sparsity) - 1e-9

    def select(self, costs, sparsity, scope):
        n, m = self.n, self.m
        groups = [c.reshape(c.shape[0], -1, m) for c in costs]
        if self.fill == "pattern":  # every group to the shot's own pattern (earlier zeros cost 0: kept)
            share = min(m - n, sparsity * m)  # weights per group, on average
            k = int(share + 1e-6)
            between = share - k > 1e-6  # then the groups whose (k+1)-th weight is cheapest lose it too
            extra = (cheapest([torch.kthvalue(g, k + 1, dim=2).values for g in groups], share - k, scope)
                     if between else [None] * len(groups))
            masks = []
            for g, e, c in zip(groups, extra, costs):  # one tensor's indices at a time: they are int64
                mask = torch.zeros_like(g, dtype=torch.bool)
                idx = torch.topk(g, k + between, dim=2, largest=False).indices
                mask.scatter_(2, idx[..., :k], True)
                if between:
                    mask.scatter_(2, idx[..., k:], e.unsqueeze(2))
                masks.append(mask.reshape(c.shape))
            return masks
        drop = [torch.topk(g, m - n, dim=2, largest=False) for g in groups]
        if self.fill == "elements" and not self.completes(sparsity):
            allowed = [torch.full_like(g, float("inf")).scatter_(2, d.indices, d.values).reshape(c.shape)
                       for g, d, c in zip(groups, drop, costs)]
            return cheapest(allowed, sparsity, scope)
        fraction = sparsity / (1 - n / m)
        chosen = ([torch.ones_like(d.values[..., 0], dtype=torch.bool) for d in drop] if fraction >= 1  # the pattern
                  else cheapest([d.values.sum(2) for d in drop], fraction, scope))
        return [(torch.zeros_like(g, dtype=torch.bool).scatter_(2, d.indices, True) & ch.unsqueeze(2))
                .reshape(g.shape[0], -1) for g, d, ch in zip(groups, drop, chosen)]

    def remove(self, W, mask, kron, update, opts, sparsity):
        if update == "correlated" and self.select_by == "sequential" and self.completes(sparsity):
            C = mask.shape[1]  # A^-1's block of the weight columns (a bias comes last)
            mask = obs_prune(W[:, :C], kron.Ainv(W)[:C, :C], self, self.target(0.0), keep=W[:, :C] == 0)[1]
        return super().remove(W, mask, kron, update, opts, sparsity)
