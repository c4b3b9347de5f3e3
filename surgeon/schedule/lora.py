"""Interleaved low-rank correction between shots (LLM Surgeon's optional first-order step).

After a shot, LoRA adapters (surgeon/model/lora.py) on every prunable linear are trained for a
few steps on the calibration windows with the next-token loss and merged back into the weights
with the pruned weights kept at zero, so the next shot's curvature sees a model that has partly
recovered. `schedule.lora.steps=0` (the default) turns it off.
"""
import logging

import torch

from surgeon.model import lora
from surgeon.model.placement import on_device

log = logging.getLogger(__name__)


def correct(adapter, windows: torch.Tensor, cfg, device: torch.device, seed: int = 0) -> list[float]:
    """Trains, merges and re-masks; returns the training losses (one per step)."""
    model = adapter.model
    names = {m: n for n, m in model.named_modules()}
    linears = [lin for layer in adapter.layers() for lin in adapter.prunable_linears(layer).values()]
    zeros = {lin: lin.weight.data == 0 for lin in linears}
    peft_model = lora.attach(model, [names[lin] for lin in linears], int(cfg.rank), float(cfg.alpha))
    losses = []
    with on_device(peft_model, device):
        peft_model.train()
        opt = torch.optim.AdamW(lora.trainable(peft_model), lr=float(cfg.lr), weight_decay=0.0)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(int(cfg.steps)):
            w = windows[torch.randint(len(windows), (1,), generator=gen)].to(device)
            loss = peft_model(w, labels=w, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    lora.merge(peft_model, zeros)
    log.info("LoRA correction: loss %.3f -> %.3f over %d steps", losses[0], losses[-1], len(losses))
    return losses
