"""A pruning method = a curvature (what weights cost) + a structure (what goes together) + an
allocation scope (where costs are compared) + an update rule (what the survivors do).

  magnitude: identity curvature, per-layer ranking, no update
  wanda:     activation-diagonal curvature, per-output-row ranking, no update
  sparsegpt: layer Hessian, per-layer (block-adaptive) ranking, sequential OBS update
Any other combination is valid too (e.g. `method=sparsegpt curvature=diagonal`).
"""
import torch

from surgeon import curvature as curvatures
from surgeon.errors import SurgeonError
from surgeon.method.obs import obs_prune

UPDATES = ("none", "obs")
ALLOCATIONS = ("layer", "row")


class Method:
    def __init__(self, cfg, curvature_cfg, structure):
        update = cfg["update"]  # `cfg.update` would be DictConfig's dict method
        if update not in UPDATES:
            raise SurgeonError(f"method.update '{update}' is not one of {', '.join(UPDATES)}")
        if cfg.allocation not in ALLOCATIONS:
            raise SurgeonError(f"method.allocation '{cfg.allocation}' is not one of {', '.join(ALLOCATIONS)}")
        if curvature_cfg.name not in curvatures.CURVATURES:
            raise SurgeonError(f"curvature '{curvature_cfg.name}' is not implemented yet")
        self.cfg, self.curvature_cfg, self.structure = cfg, curvature_cfg, structure

    @property
    def needs_data(self) -> bool:
        return curvatures.CURVATURES[self.curvature_cfg.name].needs_data

    def new_curvature(self, linear) -> curvatures.Curvature:
        return curvatures.build(self.curvature_cfg, linear)

    @torch.no_grad()
    def prune(self, linear, curv, sparsity: float) -> torch.Tensor:
        """Prunes `linear` in place; returns the boolean mask of removed weights."""
        W = linear.weight.data
        if self.cfg["update"] == "obs":
            new, removed = obs_prune(W, curv.inverse(W), self.structure, sparsity,
                                     self.cfg.allocation, int(self.cfg.blocksize))
            W.copy_(new)
        else:
            removed = self.structure.select(curv.element_costs(W), sparsity, self.cfg.allocation)
            W.masked_fill_(removed, 0.0)
        return removed
