"""`structure=unstructured`: any single weight may go."""
import torch

from surgeon.structure.base import Structure


class Unstructured(Structure):
    name = "unstructured"

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
