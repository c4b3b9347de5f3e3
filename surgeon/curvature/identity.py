"""`curvature=identity`: H = I, so the cost of a weight is its square (magnitude pruning)."""
import torch

from surgeon.curvature.base import Curvature


class Identity(Curvature):
    needs_data = False

    def matrix(self):
        return torch.eye(self.in_features, device=self.device)

    def element_costs(self, weight):
        return weight.float() ** 2
