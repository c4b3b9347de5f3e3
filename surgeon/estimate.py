"""Before the work starts: warnings (one line each) where a run will be meaningless or enormous -
windows longer than the model's positions, and calibration or evaluation that would take hours
at the rate measured here (one decoder layer's forward over a short window, times the layers)."""
import logging
import time

import torch

from surgeon import engine
from surgeon.model.placement import on_device

log = logging.getLogger("surgeon")

HOURS = 1.0  # warn beyond this many hours


def seconds_per_token(adapter, device: torch.device, tokens: int = 128) -> float:
    """The forward cost of one token through the whole decoder, measured on its first layer."""
    with on_device(engine.trunk(adapter), device):
        data = engine.capture(adapter, torch.zeros(1, tokens, dtype=torch.long), device)
    layer = adapter.layers()[0]
    with on_device(layer, device), torch.no_grad():
        engine.forward_layer(layer, data.inputs, data.layer_kwargs[0])  # warm-up
        t = time.perf_counter()
        engine.forward_layer(layer, data.inputs, data.layer_kwargs[0])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) * len(adapter.layers()) / tokens


def warn(adapter, cfg, plan, device: torch.device, eval_tokens: int) -> list[str]:
    """Logs and returns this run's warnings. `eval_tokens`: tokens of one evaluation (all corpora)."""
    out = []
    positions = adapter.max_positions()
    lengths = [("eval.seq_len", int(cfg.eval.seq_len))]
    if plan.needs_data:
        lengths.insert(0, ("calibration.seq_len", int(cfg.calibration.seq_len)))
    for key, n in lengths:
        if positions and n > positions:
            out.append(f"{key}={n} is beyond the model's {positions} positions: windows mean nothing past them")
    rate = seconds_per_token(adapter, device)
    shots = len(plan.schedule.targets(float(cfg.sparsity), len(adapter.layers())))
    passes = 3 if getattr(plan.method, "gradients", False) else 2  # forward and recompute (or backward)
    cal = int(cfg.calibration.num_samples) * int(cfg.calibration.seq_len) if plan.needs_data else 0
    hours = cal * passes * shots * rate / 3600
    if hours > HOURS:
        out.append(f"calibration will take about {hours:.0f} h at the {1 / rate:,.0f} tokens/s measured here "
                   f"({cal:,} tokens, {passes} passes per shot, {shots} shot(s)): lower calibration.num_samples")
    hours = 2 * eval_tokens * rate / 3600  # the dense and the pruned model
    if hours > HOURS:
        out.append(f"evaluation will take about {hours:.0f} h at the {1 / rate:,.0f} tokens/s measured here "
                   f"({eval_tokens:,} tokens, dense and pruned): set eval.max_tokens")
    for line in out:
        log.warning(line)
    return out
