"""`schedule=one_shot`: the whole target in one step (SparseGPT, Wanda)."""
from surgeon.engine import prune


def run(adapter, windows, method, sparsity, device, cfg, on_shot=None, **_):
    records = prune(adapter, windows, method, sparsity, device, seed=int(cfg.seed))
    if on_shot:
        on_shot(1, sparsity)
    return records
