"""`schedule=one_shot`: the whole target in one pass over the layers (SparseGPT, Wanda)."""
from surgeon.engine import prune_layerwise


def run(adapter, windows, method, sparsity, device, **_):
    return prune_layerwise(adapter, windows, method, sparsity, device)
