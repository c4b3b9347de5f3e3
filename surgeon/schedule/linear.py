"""`schedule=linear`: LLM Surgeon's multi-shot schedule. Shot t of T prunes to t * target / T,
with the curvature re-estimated on the partly pruned model before every shot, so later shots
see (and correct) what earlier ones did. Perplexity can be measured after each shot, which also
gives the intermediate sizes of one run (a 50% run over 40 shots passes 90%, 80%, ... of the
dense size). `schedule.lora.steps>0` interleaves a LoRA correction after every shot (lora.py)."""
import time

from surgeon.engine import prune


def run_shots(adapter, windows, method, sparsity, device, cfg, shots: int, on_shot=None):
    records = []
    for t in range(1, shots + 1):
        target = t * sparsity / shots
        timings = {}
        start = time.time()
        records = prune(adapter, windows, method, target, device, seed=int(cfg.seed) + t - 1, timings=timings)
        lora_cfg = cfg.schedule.get("lora")
        if lora_cfg and int(lora_cfg.steps) > 0 and windows is not None:
            from surgeon.schedule.lora import correct

            losses = correct(adapter, windows, lora_cfg, device, seed=int(cfg.seed) + t)
            timings["lora_loss"] = [losses[0], losses[-1]]
        if on_shot:
            on_shot(t, target, {"prune_s": time.time() - start, **timings})
    return records


def run(adapter, windows, method, sparsity, device, cfg, on_shot=None, **_):
    return run_shots(adapter, windows, method, sparsity, device, cfg, int(cfg.schedule.shots), on_shot)
