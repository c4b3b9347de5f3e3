"""`structure=unstructured`: any single weight may go."""
import torch


class Unstructured:
    name = "unstructured"
    period = None   # no column pattern: a selection may span a whole block

    def check(self, in_features: int) -> None:
        pass

    def target(self, sparsity: float) -> float:
        return sparsity

    def select(self, costs: torch.Tensor, sparsity: float, scope: str = "layer") -> torch.Tensor:
        """Boolean mask of weights to REMOVE: the lowest costs, over the matrix or per row."""
        mask = torch.zeros_like(costs, dtype=torch.bool)
        if scope == "row":
            k = int(costs.shape[1] * sparsity)
            if k:
                mask.scatter_(1, torch.topk(costs, k, dim=1, largest=False).indices, True)
        else:
            k = int(costs.numel() * sparsity)
            if k:
                mask.view(-1)[torch.topk(costs.flatten(), k, largest=False).indices] = True
        return mask
