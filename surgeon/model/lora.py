"""LoRA adapters (peft) on chosen linears of a model, and merging them back into plain weights;
the one helper behind the LoRA correction between shots (surgeon/schedule/lora.py) and
Compresso's training (surgeon/method/compresso.py). Merging a low-rank B A is dense, so masks
given to `merge` are applied again: every pruned weight stays exactly zero."""
import torch


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
