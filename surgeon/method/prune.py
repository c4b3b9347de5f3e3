"""A pruning method = a curvature (what weights cost) + a structure (what goes together) + an
allocation scope (where costs are compared) + an update rule (what the survivors do).

  magnitude: identity curvature, per-layer ranking, no update
  wanda:     activation-diagonal curvature, per-output-row ranking, no update
  sparsegpt: layer Hessian, per-layer (block-adaptive) ranking, sequential OBS update
  llm_surgeon: K-FAC, one global threshold, correlated OBS updates, multi-shot
  k_obd / l_obd: K-FAC or activation diagonals, global threshold, no update
  slimgpt:   layer Hessian scored per head / neuron (grouped Cholesky), batched greedy OBS,
             incremental per-layer ratios (structure=heads_neurons)
Any other combination is valid too (e.g. `method=llm_surgeon curvature=diagonal`).
"""
import torch

from surgeon import curvature as curvatures
from surgeon.config import fisher_kind
from surgeon.errors import SurgeonError
from surgeon.method import batched_greedy
from surgeon.method.obs import obs_prune
from surgeon.tracking.results import linear_record

UPDATES = ("none", "obs", "correlated")
ALLOCATIONS = ("layer", "row", "global")


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
        self.fisher = fisher_kind(curvature_cfg)  # which labels the gradients use, if any
        if structure.name == "heads_neurons" and (self.is_global or update not in ("obs", "none")):
            raise SurgeonError("structure=heads_neurons is pruned layer by layer on the layer Hessian: it needs "
                               "method.update=obs|none, allocation layer|row and a curvature without gradients")
        if update == "obs" and (self.is_global or structure.name not in ("unstructured", "nm", "heads_neurons")):
            raise SurgeonError("method.update=obs (SparseGPT's sequential OBS) needs per-layer allocation, "
                               "a curvature without gradients and an unstructured, N:M or heads_neurons structure")
        if update != "none" and curvature_cfg.get("source") == "fisher":
            raise SurgeonError("curvature source=fisher is an exact diagonal without Kronecker factors: "
                               "it gives OBD costs only (method.update=none)")
        if getattr(structure, "select_by", "costs") == "sequential" and update != "correlated":
            raise SurgeonError("structure.select=sequential picks N:M masks inside the correlated update: "
                               "it needs method.update=correlated (method.update=obs already selects so)")
        if cfg.allocation == "row" and structure.name == "rows_cols":
            raise SurgeonError("method.allocation=row ranks weights within rows; use layer or global for rows_cols")

    @property
    def is_global(self) -> bool:
        """Decisions need whole-model statistics, not one layer's."""
        return (self.cfg.allocation == "global" or self.cfg["update"] == "correlated"
                or self.structure.name == "rows_cols" or curvatures.needs_gradients(self.curvature_cfg))

    @property
    def needs_data(self) -> bool:
        return curvatures.CURVATURES[self.curvature_cfg.name].needs_data

    def new_curvature(self, linear) -> curvatures.Curvature:
        return curvatures.build(self.curvature_cfg, linear)

    def measured(self, adapter, layer, linears: dict) -> list[str]:
        """The linears whose curvature the layer's decisions read: all of them, except for
        heads_neurons, decided on the output linears' columns alone (o_proj, down_proj / fc2)."""
        if self.structure.name != "heads_neurons":
            return list(linears)
        outputs = (adapter.attention(layer).o, adapter.mlp(layer).output)
        return [name for name, lin in linears.items() if any(lin is o for o in outputs)]

    @torch.no_grad()
    def prune_layer(self, adapter, layer, index: int, linears: dict, curvs: dict, ratio: float) -> list[dict]:
        """Prunes one decoder layer in place; returns a record per linear."""
        extra = {}
        if self.structure.name == "heads_neurons":
            extra = batched_greedy.prune_layer(adapter, layer, curvs, ratio, self.cfg)
        else:
            for name, lin in linears.items():
                self.prune(lin, curvs[name], ratio)
        return [linear_record(index, name, lin.weight, **extra.get(name, {})) for name, lin in linears.items()]

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
