"""`structure=nm`: N:M semi-structured sparsity - at most N nonzeros in every M consecutive
weights along the input dimension (2:4 is what sparse tensor cores accelerate).

A multi-shot schedule reaches the pattern through intermediate sparsities, and `fill` says how:
  groups:   each shot makes the cheapest whole groups N:M and leaves the rest dense (the LLM
            Surgeon reference); the last shot must then force every remaining, costliest group.
  elements: each shot removes the cheapest single weights, at most M-N per group (each group's
            cheapest), so the last shot only completes the groups that are still short.
One-shot methods see only the final pattern, where the two agree."""
import torch

from surgeon.errors import SurgeonError

FILLS = ("groups", "elements")


class NM:
    name = "nm"

    def __init__(self, n: int, m: int, fill: str = "groups"):
        if not (0 < n < m):
            raise SurgeonError(f"structure=nm needs 0 < n < m, got n={n} m={m} (n counts the kept weights)")
        if fill not in FILLS:
            raise SurgeonError(f"structure.fill '{fill}' is not one of {', '.join(FILLS)}")
        self.n, self.m, self.fill = n, m, fill
        self.period = m  # masks are chosen M columns at a time

    def check(self, in_features: int) -> None:
        if in_features % self.m:
            raise SurgeonError(f"structure=nm: m={self.m} does not divide a layer width of {in_features}")

    def target(self, sparsity: float) -> float:
        return 1 - self.n / self.m

    def select(self, costs: torch.Tensor, sparsity: float = 0.0, scope: str = "layer") -> torch.Tensor:
        """Boolean mask to REMOVE: the M-N lowest costs in every group of M columns of each row."""
        rows, cols = costs.shape
        groups = costs.reshape(rows, cols // self.m, self.m)
        drop = torch.topk(groups, self.m - self.n, dim=2, largest=False).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, drop, True)
        return mask.reshape(rows, cols)
