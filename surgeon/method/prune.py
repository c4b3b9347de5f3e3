"""A pruning method = a curvature (what weights cost) + a structure (what goes together) + an
allocation scope (where costs are compared) + an update rule (what the survivors do).

  magnitude:   identity curvature, per-matrix ranking, no update
  wanda:       activation-diagonal curvature (undamped), per-output-row ranking, no update
  sparsegpt:   layer Hessian, per-matrix (block-adaptive) ranking, sequential OBS update
  llm_surgeon: K-FAC, one global threshold, correlated OBS updates, multi-shot
  k_obd / l_obd: K-FAC or activation diagonals, global threshold, no update
  slimgpt:     layer Hessian scored per head / neuron (grouped Cholesky), batched greedy OBS,
               incremental per-layer ratios (structure=heads_neurons)
Any other combination is valid too (e.g. `method=llm_surgeon curvature=diagonal`).

One pruning step, whatever the combination:
  statistics: layer by layer, each layer's from the outputs of the already pruned layers before
    it (surgeon/engine.py `sequential`) - or, when decisions compare all layers (a global
    threshold) or the curvature needs gradients, of the whole model first (`whole_model`);
  decisions: the structure prices its groups from each linear's Kronecker factors, selects the
    cheapest under the scope and removes them with the update - or, for updates that choose as
    they go (obs), solves a layer at a time.
"""
import logging
import time

import torch

from surgeon import curvature as curvatures
from surgeon import engine
from surgeon.config import require_counts
from surgeon.errors import SurgeonError
from surgeon.structure.base import SCOPES
from surgeon.tracking.results import linear_record

log = logging.getLogger(__name__)

UPDATES = ("none", "obs", "correlated")


class Method:
    def __init__(self, cfg, curvature_cfg, structure):
        self.update = cfg["update"]  # `cfg.update` would be DictConfig's dict method
        if self.update not in UPDATES:
            raise SurgeonError(f"method.update '{self.update}' is not one of {', '.join(UPDATES)}")
        if cfg.unrouted not in ("magnitude", "dense"):
            raise SurgeonError(f"method.unrouted '{cfg.unrouted}' is not one of magnitude, dense")
        if cfg.allocation not in SCOPES:
            raise SurgeonError(f"method.allocation '{cfg.allocation}' is not one of {', '.join(SCOPES)}")
        require_counts(cfg, "method", positive=("blocksize", "head_batch", "ffn_group_size", "ffn_min_group_size",
                                                "solve_batch"),
                       nonnegative=("max_correlate",), why={"max_correlate": "0: all at once"})
        if structure.period and int(cfg.blocksize) % structure.period:
            raise SurgeonError(f"method.blocksize {cfg.blocksize} must be a multiple of the structure's "
                               f"group size {structure.period}")
        self.cfg, self.curvature_cfg, self.structure = cfg, curvature_cfg, structure
        self.backend = curvatures.backend(curvature_cfg)
        self.gradients = self.backend.uses_gradients(curvature_cfg)
        if self.update != "none" and not self.backend.kronecker(curvature_cfg):
            raise SurgeonError("curvature source=fisher is an exact diagonal without Kronecker factors: "
                               "it gives OBD costs only (method.update=none)")
        structure.check_method(self.update, cfg.allocation, self.gradients)
        # decisions that compare layers, or gradients of the loss, need every layer's statistics first
        self.whole_model = cfg.allocation == "global" or self.gradients

    def gradient_pass(self, device) -> str:
        """layerwise (one layer on the accelerator) or whole (the model there at once); auto:
        whole on a CPU, where the model lives anyway, layerwise on an accelerator."""
        mode = self.curvature_cfg.get("gradient_pass", "auto")
        return ("whole" if device.type == "cpu" else "layerwise") if mode == "auto" else mode

    @property
    def needs_data(self) -> bool:
        return self.backend.needs_data or self.structure.needs_data

    def evaluate(self, ctx) -> dict:
        return {}

    def report(self) -> dict:
        return {}

    def statistics(self, adapter, index: int, layer) -> dict:
        """{(index, name): statistics object} for the linears this layer's decisions read;
        linears that read one input share an object."""
        wanted = {t.name for t in self.structure.targets(adapter, index, layer)}
        linears = adapter.prunable_linears(layer)
        out = self.structure.statistics(adapter, index, layer)  # what the structure itself observes (if anything)
        for group in adapter.input_groups(layer):
            members = {n: linears[n] for n in group if n in wanted}
            if members:
                curv = self.backend(members, self.curvature_cfg)
                out.update({(index, n): curv for n in members})
        return out

    def step(self, ctx, sparsity: float | list[float], seed: int, timings: dict) -> list[dict]:
        """Prunes the model to `sparsity` (or decoder layer i to sparsity[i]); returns a record
        per prunable linear. `timings` receives where the time went: forward_s, statistics_s and
        decide_s layer by layer; curvature_s and update_s for the whole-model passes."""
        adapter, device = ctx.adapter, ctx.device
        windows = ctx.windows if self.needs_data else None
        layers = adapter.layers()

        def ratio(i):
            return sparsity[i] if isinstance(sparsity, (list, tuple)) else sparsity

        def statistics(i, layer):
            return self.statistics(adapter, i, layer)

        if not self.whole_model:
            return engine.sequential(adapter, windows, device, statistics,
                                     lambda i, layer, stats: self.decide(adapter, [i], stats, ratio(i)), timings)
        t = time.time()
        mode = self.gradient_pass(device)
        stats = engine.whole_model(adapter, windows, device, statistics, self.gradients,
                                   self.backend.labels(self.curvature_cfg), seed,
                                   int(self.curvature_cfg.chunk) if self.gradients else 1, mode)
        timings["curvature_s"] = time.time() - t
        log.info("curvature of %d linears estimated in %.1fs", len(stats), timings["curvature_s"])
        if self.gradients:
            timings["gradient_pass"] = mode
            if self.curvature_cfg.time_floor:  # the same tokens through a plain forward + backward
                timings["floor_s"] = engine.floor_pass(adapter, windows, device)
                log.info("gradient pass %.1fs (%s) vs plain forward + backward %.1fs: x%.2f", timings["curvature_s"],
                         mode, timings["floor_s"], timings["curvature_s"] / timings["floor_s"])
        t = time.time()
        records = self.decide(adapter, list(range(len(layers))), stats, sparsity)
        timings["update_s"] = time.time() - t
        log.info("costs, threshold and updates in %.1fs", timings["update_s"])
        return records

    @torch.no_grad()
    def decide(self, adapter, indices: list[int], stats: dict, sparsity: float) -> list[dict]:
        """Prunes decoder layers `indices` together from their statistics (`stats`: (layer, name)
        -> statistics object); returns a record per prunable linear."""
        layers = adapter.layers()
        targets = [t for i in indices for t in self.structure.targets(adapter, i, layers[i])]
        # tokens each linear's statistics saw: fewer than the windows' for experts of a mixture
        seen = {k: c.tokens for k, c in stats.items() if self.backend.needs_data and hasattr(c, "tokens")}
        if self.cfg.unrouted == "dense":
            targets = [t for t in targets if seen.get((t.layer, t.name), 1) > 0]

        held = []  # the statistics object whose input factor (and inverse) is held: q/k/v reuse it

        def factors(t):
            curv = stats[(t.layer, t.name)]
            if held and held[0] is not curv:
                held.pop().release()
            held[:] = [curv]
            return curv.factors(t.name)

        extras = self.structure.decide(targets, factors, stats, sparsity, self.cfg, self.update)
        for curv in held:
            curv.release()
        return [linear_record(i, name, lin.weight, **extras.get((i, name), {}),
                              **({"tokens": seen[(i, name)]} if (i, name) in seen else {}))
                for i in indices for name, lin in adapter.prunable_linears(layers[i]).items()]

