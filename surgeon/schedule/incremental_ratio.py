"""`schedule=incremental_ratio`: SlimGPT's Incremental Pruning Ratio. Layer-wise pruning cannot
see how an early layer's error grows through the layers after it, so early layers are pruned
less and deep ones more: r_i = a + b f(i / (L-1)) with f rising from 0 to 1 (log: log(1 +
(e-1) x), linear: x, uniform: 0), b = spread * target, a chosen so the mean is the target;
ratios are kept within [0, max_ratio] and the mean restored. One shot; layer-wise methods only."""
import math

from surgeon.errors import SurgeonError
from surgeon.schedule.base import Schedule

CURVES = {"log": lambda x: math.log1p((math.e - 1) * x), "linear": lambda x: x, "uniform": lambda x: 0.0}


def ratios(n_layers: int, target: float, curve: str = "log", spread: float = 1.0,
           max_ratio: float = 0.9) -> list[float]:
    f = [CURVES[curve](i / max(1, n_layers - 1)) for i in range(n_layers)]
    mean_f = sum(f) / n_layers
    return spread_clipped([target + spread * target * (fi - mean_f) for fi in f], target, max_ratio)


def spread_clipped(r: list[float], target: float, max_ratio: float) -> list[float]:
    """`r` kept within [0, max_ratio], the clipped amount spread over the layers with room, so
    the mean stays `target`."""
    for _ in range(50):  # clip, then spread the clipped amount over the layers with room
        r = [min(max(x, 0.0), max_ratio) for x in r]
        gap = target * len(r) - sum(r)
        free = [i for i, x in enumerate(r) if (0 < x < max_ratio) or (gap > 0 and x == 0)]
        if abs(gap) < 1e-9 or not free:
            break
        for i in free:
            r[i] += gap / len(free)
    return r


class IncrementalRatio(Schedule):
    per_layer = True

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.curve not in CURVES:
            raise SurgeonError(f"schedule.curve '{cfg.curve}' is not one of {', '.join(CURVES)}")
        if float(cfg.spread) < 0:
            raise SurgeonError(f"schedule.spread must be >= 0, got {cfg.spread}")
        if not 0 < float(cfg.max_ratio) <= 1:
            raise SurgeonError(f"schedule.max_ratio must be in (0, 1], got {cfg.max_ratio}")

    def targets(self, sparsity, n_layers):
        return [ratios(n_layers, sparsity, self.cfg.curve, float(self.cfg.spread), float(self.cfg.max_ratio))]
