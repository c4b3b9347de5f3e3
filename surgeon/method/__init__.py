"""Methods compose the shared parts; `conf/method/*.yaml` are the paper presets.

`Method` prunes from curvature (one-shot or multi-shot); Compresso learns what to remove by
training instead. Both answer the same calls: `needs_data`, `step(ctx, sparsity, seed, timings)`
(prune the model to a sparsity), `evaluate(ctx)` and `report()` (what they add to results.json).
"""
from surgeon.method.compresso import Compresso
from surgeon.method.prune import Method


def build(cfg, structure, schedule):
    if cfg.method.name == "compresso":
        return Compresso(cfg, structure, schedule)
    return Method(cfg.method, cfg.curvature, structure)


__all__ = ["Compresso", "Method", "build"]
