"""Compaction: turn a structurally pruned (masked) model into one with smaller weight shapes.

What can go is read from the weights, so it works after any structured method. The adapter says
what the units are (`Units`: attention units and FFN neurons) and how to resize; here:
- a unit whose consumer columns are all zero, or whose silencing producer rows (and bias) are
  (a zero value head, a zero FFN pre-activation), adds nothing and goes;
- a hidden dimension nothing writes to (its embedding column and every writer's row are zero,
  as Compresso leaves them) goes from every linear, the embedding and the head, on architectures
  whose norms allow it (the adapter's `hidden_prunable`).
- a decoder layer that adds nothing (every writer to the residual stream zero, as depth pruning
  leaves it) goes as a whole, where the adapter says the architecture hands its input on.
At least one unit of each family per kept layer stays, so every layer keeps a valid shape. Output
biases are untouched, so the compacted model's logits equal the masked model's.

Saving: `save(model, dir)` writes safetensors + config with `surgeon_layer_shapes` (heads, KV
heads, FFN width per layer). When every layer has the same shape and the architecture can take
it from its config, the config's own fields are set too and transformers' `from_pretrained`
loads the model as is; otherwise `surgeon.compact.load(dir)` builds the per-layer shapes first.
"""
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from surgeon.model.adapters import adapter_for


def _dead_rows(lin: nn.Linear) -> torch.Tensor:
    dead = (lin.weight == 0).all(1)
    return dead if lin.bias is None else dead & (lin.bias == 0)


def _keep_one(dead: torch.Tensor) -> torch.Tensor:
    if dead.all():
        dead = dead.clone()
        dead[0] = False
    return dead


def layer_plan(adapter, layer) -> dict[str, torch.Tensor]:
    """{kind: indices of the units to keep} for `layer`: the units that still add something."""
    keep = {}
    for units in adapter.units(layer):
        dead = (units.consumer.weight == 0).all(0)[units.cols].all(1)
        for j in units.silencers:
            dead |= _dead_rows(units.producers[j])[units.rows[j]].all(1)
        keep[units.kind] = (~_keep_one(dead)).nonzero().flatten()
    return keep


def silent(adapter, layer) -> bool:
    """A layer that adds nothing to the residual stream: every writer's rows (and bias) are zero."""
    return all(_dead_rows(lin).all() for lin in adapter.hidden_writers(layer))


def hidden_plan(adapter) -> torch.Tensor | None:
    """The hidden dimensions something writes to, or None when all of them are (or the
    architecture's norms cannot lose dimensions exactly)."""
    if not adapter.hidden_prunable:
        return None
    dead = (adapter.embeddings().weight == 0).all(0)
    for layer in adapter.layers():
        for lin in adapter.hidden_writers(layer):
            dead &= _dead_rows(lin)
    dead = _keep_one(dead)
    return (~dead).nonzero().flatten() if dead.any() else None


@torch.no_grad()
def compact(model) -> list[dict]:
    """Removes every dead unit, neuron and hidden dimension in place; returns the per-layer shapes."""
    adapter = adapter_for(model)
    if adapter.layers_droppable():
        keep = [i for i, layer in enumerate(adapter.layers()) if not silent(adapter, layer)]
        if len(keep) < len(adapter.layers()):
            adapter.drop_layers(keep)
    shapes = [adapter.resize(layer, layer_plan(adapter, layer)) for layer in adapter.layers()]
    keep = hidden_plan(adapter)
    if keep is not None:
        adapter.shrink_hidden(keep)
    adapter.describe(shapes)
    return shapes


def save(model, tokenizer, directory) -> int:
    """save_pretrained (safetensors) into a folder beside `directory`, renamed into place when
    complete (a crash never leaves half a model); returns the size of the weight files in bytes."""
    directory = Path(directory)
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    if tokenizer is not None:
        tokenizer.save_pretrained(partial)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(partial, directory)
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def reshape(adapter, shapes: list[dict]) -> None:
    """Resizes each decoder layer to its recorded shape (`surgeon_layer_shapes`), weights aside."""
    for layer, s in zip(adapter.layers(), shapes):
        neurons = {} if s["ffn"] is None else {"neurons": torch.arange(s["ffn"])}
        adapter.resize(layer, {"heads": torch.arange(s["num_kv_heads"]), **neurons})


def load(directory, dtype=torch.float32):
    """Loads a compacted model, whatever its per-layer shapes."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory)
    shapes = getattr(config, "surgeon_layer_shapes", None)
    if shapes is None or getattr(config, "surgeon_native", False):
        return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    adapter = adapter_for(model)
    reshape(adapter, shapes)  # the shapes only; the weights come next
    state = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - adapter.tied_keys():
        raise ValueError(f"compacted checkpoint does not fit: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
