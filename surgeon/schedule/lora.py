"""Interleaved low-rank correction between shots (LLM Surgeon's optional first-order step).

After a shot, LoRA adapters (peft) on every prunable linear are trained for a few steps on the
calibration windows with the next-token loss, merged back into the weights, and the pruned
weights are zeroed again (a merged B A is dense), so the next shot's curvature sees a model
that has partly recovered. `schedule.lora.steps=0` (the default) turns it off.
"""
import logging

import torch

log = logging.getLogger(__name__)


def correct(adapter, windows: torch.Tensor, cfg, device: torch.device, seed: int = 0) -> list[float]:
    """Trains, merges and re-masks; returns the training losses (one per step)."""
    from peft import LoraConfig, get_peft_model

    model = adapter.model
    names = {m: n for n, m in model.named_modules()}
    linears = [lin for layer in adapter.layers() for lin in adapter.prunable_linears(layer).values()]
    masks = [lin.weight.data == 0 for lin in linears]
    lcfg = LoraConfig(r=int(cfg.rank), lora_alpha=float(cfg.alpha), lora_dropout=0.0,
                      target_modules=[names[lin] for lin in linears])
    peft_model = get_peft_model(model, lcfg).to(device)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(cfg.lr), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(int(cfg.steps)):
        w = windows[torch.randint(len(windows), (1,), generator=gen)].to(device)
        loss = peft_model(w, labels=w, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    merged = peft_model.merge_and_unload()
    merged.eval()
    with torch.no_grad():
        for lin, mask in zip(linears, masks):
            lin.weight.data[mask] = 0.0
    merged.to("cpu")
    log.info("LoRA correction: loss %.3f -> %.3f over %d steps", losses[0], losses[-1], len(losses))
    return losses
