"""`layer_sparsity=owl`: Outlier-Weighted Layer-wise sparsity (Yin et al. 2024, OWL).

Layers that hold more outlier weights lose more when pruned, so they are pruned less. On the
dense model, with the calibration windows, each decoder layer's outlier ratio is
    D_l = share of the layer's weights whose Wanda score |w_ij| ||x_j||_2 exceeds M x the mean
          score of the layer (all its prunable linears pooled),
and with D scaled to [0, 2 lambda] and centred,
    s_l = s - (D'_l - mean D'),   D'_l = 2 lambda (D_l - min D) / (max D - min D),
so every s_l lies within +-lambda of the target s and the mean is s (decoder layers have equal
sizes: the same total). Ratios are kept in [0, max_ratio] with the mean restored. The paper's
defaults: M = 5, lambda = 0.08. A multi-shot schedule scales the deviation with the shot's
target. The scores are collected once, layer by layer on the dense model (surgeon/engine.py).
"""
import logging

import torch
from omegaconf import OmegaConf

from surgeon import engine
from surgeon.curvature.diagonal import Diagonal
from surgeon.errors import SurgeonError
from surgeon.schedule.incremental_ratio import spread_clipped

log = logging.getLogger(__name__)

_SECOND_MOMENTS = OmegaConf.create({"source": "activations", "damp": 0.0, "damp_g": 0.0, "store": "device",
                                    "fisher": "empirical", "chunk": 1})


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Share of the pooled `scores` above m x their mean."""
    flat = torch.cat([s.flatten() for s in scores])
    return float((flat > m * flat.mean()).float().mean())


def owl_ratios(outliers: list[float], target: float, lam: float, max_ratio: float = 1.0) -> list[float]:
    """Per-layer sparsity from per-layer outlier ratios: more outliers, less sparsity."""
    d = torch.tensor(outliers, dtype=torch.float64)
    span = float(d.max() - d.min())
    d = (d - d.min()) * (2 * lam / span) if span > 0 else torch.zeros_like(d)
    return spread_clipped([target - x for x in (d - d.mean()).tolist()], target, max_ratio)


class Owl:
    needs_data = True

    def __init__(self, cfg):
        self.m, self.lam, self.max_ratio = float(cfg.M), float(cfg["lambda"]), float(cfg.max_ratio)
        if self.m <= 0:
            raise SurgeonError(f"layer_sparsity.M must be positive, got {cfg.M}")
        if not 0 <= self.lam < 1:
            raise SurgeonError(f"layer_sparsity.lambda must be in [0, 1), got {cfg['lambda']}")
        if not 0 < self.max_ratio <= 1:
            raise SurgeonError(f"layer_sparsity.max_ratio must be in (0, 1], got {cfg.max_ratio}")
        self.outliers = None  # per layer, from the dense model (the first shot)
        self.final = None

    def layer_ratios(self, ctx, target: float, final: float) -> list[float]:
        """The sparsity of each decoder layer for a shot to `target` of a run to `final`."""
        if self.outliers is None:
            self.outliers = self.measure(ctx.adapter, ctx.windows, ctx.device)
            log.info("OWL outlier ratios (M=%g): %s", self.m, " ".join(f"{x:.4f}" for x in self.outliers))
        scale = target / final if final > 0 else 0.0
        return owl_ratios(self.outliers, target, self.lam * scale, self.max_ratio)

    def report(self) -> dict:
        """What a shot's record keeps: the outlier ratios the ratios came from."""
        return {"outlier_ratios": self.outliers, "M": self.m, "lambda": self.lam}

    def measure(self, adapter, windows, device) -> list[float]:
        outliers = []

        def statistics(i, layer):
            linears, out = adapter.prunable_linears(layer), {}
            for group in adapter.input_groups(layer):  # one object per input, as the methods do
                moments = Diagonal({n: linears[n] for n in group}, _SECOND_MOMENTS)
                out.update({n: moments for n in group})
            return out

        def score(i, layer, stats):
            norms = {n: s.diag().sqrt() for n, s in stats.items()}
            outliers.append(outlier_ratio([lin.weight.abs() * norms[n] for n, lin in
                                           adapter.prunable_linears(layer).items()], self.m))
            return []

        engine.sequential(adapter, windows, device, statistics, score)
        return outliers
