"""`structure=nm`: N:M semi-structured sparsity - at most N nonzeros in every M consecutive
weights along the input dimension (2:4 is what sparse tensor cores accelerate)."""
import torch

from surgeon.errors import SurgeonError


class NM:
    name = "nm"

    def __init__(self, n: int, m: int):
        if not (0 < n < m):
            raise SurgeonError(f"structure=nm needs 0 < n < m, got n={n} m={m} (n counts the kept weights)")
        self.n, self.m = n, m
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
