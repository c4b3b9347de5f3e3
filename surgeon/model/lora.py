"""LoRA adapters (peft) on chosen linears of a model, and merging them back into plain weights;
the one helper behind the LoRA correction between shots (surgeon/schedule/linear.py), the
recovery after pruning (surgeon/recovery.py) and Compresso's training (surgeon/method/compresso.py).
Merging a low-rank B A is dense, so masks given to `merge` are applied again: every pruned weight
stays exactly zero (and an N:M pattern intact)."""
import torch

from surgeon.model.placement import on_device


def attach(model, module_names: list[str], rank: int, alpha: float):
    """The peft model with LoRA (rank, alpha, no dropout) on `module_names`."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=module_names))


def trainable(peft_model) -> list[torch.nn.Parameter]:
    return [p for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" in n]


@torch.no_grad()
def merge(peft_model, zeros: dict | None = None):
    """Merges and unloads the adapters; `zeros` ({linear: mask of its pruned weights}) are
    zeroed again. Returns the plain model, in eval mode."""
    model = peft_model.merge_and_unload().eval()
    for lin, mask in (zeros or {}).items():
        lin.weight.data[mask] = 0.0
    return model


def finetune(adapter, batches, steps: int, rank: int, alpha: float, lr: float, device: torch.device) -> list[float]:
    """LoRA on every prunable linear, trained `steps` AdamW steps on `batches` (an iterator of
    model keyword arguments with `labels`), merged with every zero weight kept at zero. Returns
    the training losses, one per step."""
    model = adapter.model
    names = {m: n for n, m in model.named_modules()}
    linears = [lin for layer in adapter.layers() for lin in adapter.prunable_linears(layer).values()]
    zeros = {lin: lin.weight.data == 0 for lin in linears}
    peft_model = attach(model, [names[lin] for lin in linears], rank, alpha)
    losses = []
    with on_device(peft_model, device):
        peft_model.train()
        opt = torch.optim.AdamW(trainable(peft_model), lr=lr, weight_decay=0.0)
        for _ in range(steps):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            loss = peft_model(**batch, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    merge(peft_model, zeros)
    return losses


def window_batches(windows: torch.Tensor, batch_size: int, seed: int):
    """An endless seeded stream of `batch_size` windows drawn from `windows`, next-token labels."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        w = windows[torch.randint(len(windows), (batch_size,), generator=gen)]
        yield {"input_ids": w, "labels": w}
