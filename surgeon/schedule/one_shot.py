"""`schedule=one_shot`: the whole target in one step (SparseGPT, Wanda); `schedule.shots` is
ignored."""
from surgeon.schedule.linear import run_shots


def run(adapter, windows, method, sparsity, device, cfg, on_shot=None, **_):
    return run_shots(adapter, windows, method, sparsity, device, cfg, 1, on_shot)
