"""Interleaved low-rank correction between shots (LLM Surgeon's optional first-order step).

After a shot, LoRA adapters on every prunable linear are trained for a few steps on the
calibration windows with the next-token loss and merged back into the weights with the pruned
weights kept at zero (surgeon/model/lora.py `finetune`, the helper the final recovery uses too),
so the next shot's curvature sees a model that has partly recovered. `schedule.lora.steps=0`
(the default) turns it off.
"""
import logging

import torch

from surgeon.model import lora

log = logging.getLogger(__name__)


def correct(adapter, windows: torch.Tensor, cfg, device: torch.device, seed: int = 0) -> list[float]:
    """Trains, merges and re-masks; returns the training losses (one per step)."""
    losses = lora.finetune(adapter, lora.window_batches(windows, 1, seed), int(cfg.steps), int(cfg.rank),
                           float(cfg.alpha), float(cfg.lr), device)
    log.info("LoRA correction: loss %.3f -> %.3f over %d steps", losses[0], losses[-1], len(losses))
    return losses
