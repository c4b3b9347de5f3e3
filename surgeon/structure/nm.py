"""`structure=nm`: N:M semi-structured sparsity - at most N nonzeros in every M consecutive
weights along the input dimension (2:4 is what sparse tensor cores accelerate).

A multi-shot schedule reaches the pattern through intermediate sparsities, and `fill` says how:
  groups:   each shot makes the cheapest whole groups N:M and leaves the rest dense (the LLM
            Surgeon reference); the last shot must then force every remaining, costliest group.
  elements: each shot removes the cheapest single weights, at most M-N per group (each group's
            cheapest), so the last shot only completes the groups that are still short.
One-shot methods see only the final pattern, where the two agree.

`select` says how a K-FAC step picks the weights of the shot that completes the pattern:
  costs:      each group's M-N cheapest by the shot's costs, all chosen before any update (the
              paper);
  sequential: group by group along the input, each from the costs w^2 / U_cc^2 of the weights
              as the removals in earlier groups of the row left them (U: Cholesky of A^-1), as
              SparseGPT chooses its masks. Within a row K-FAC's costs rank weights by A alone,
              so this is OBS's greedy order; the correlated update then solves for the mask."""
import torch

from surgeon.errors import SurgeonError

FILLS = ("groups", "elements")
SELECTS = ("costs", "sequential")


class NM:
    name = "nm"

    def __init__(self, n: int, m: int, fill: str = "groups", select: str = "costs"):
        if not (0 < n < m):
            raise SurgeonError(f"structure=nm needs 0 < n < m, got n={n} m={m} (n counts the kept weights)")
        if fill not in FILLS:
            raise SurgeonError(f"structure.fill '{fill}' is not one of {', '.join(FILLS)}")
        if select not in SELECTS:
            raise SurgeonError(f"structure.select '{select}' is not one of {', '.join(SELECTS)}")
        self.n, self.m, self.fill, self.select_by = n, m, fill, select
        self.period = m  # masks are chosen M columns at a time

    def check(self, in_features: int) -> None:
        if in_features % self.m:
            raise SurgeonError(f"structure=nm: m={self.m} does not divide a layer width of {in_features}")

    def target(self, sparsity: float) -> float:
        return 1 - self.n / self.m

    def completes(self, sparsity: float) -> bool:
        """Whether a shot to `sparsity` is the one that completes the pattern."""
        return sparsity >= self.target(sparsity) - 1e-9

    def select(self, costs: torch.Tensor, sparsity: float = 0.0, scope: str = "layer") -> torch.Tensor:
        """Boolean mask to REMOVE: the M-N lowest costs in every group of M columns of each row."""
        rows, cols = costs.shape
        groups = costs.reshape(rows, cols // self.m, self.m)
        drop = torch.topk(groups, self.m - self.n, dim=2, largest=False).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, drop, True)
        return mask.reshape(rows, cols)

    def sequential(self, W: torch.Tensor, Ainv: torch.Tensor) -> torch.Tensor:
        """Mask to REMOVE that completes the pattern, chosen group by group as SparseGPT does;
        W's zeros (earlier shots') stay among the removed."""
        from surgeon.method.obs import obs_prune  # structures are imported by methods, not the reverse
        return obs_prune(W, Ainv, self, self.target(0.0), keep=W == 0)[1]
