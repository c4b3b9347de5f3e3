"""Compaction: turn a structurally pruned (masked) model into one with smaller weight shapes.

What can go is read from the weights, so it works after any structured method:
- an attention unit (a KV group: one K/V head and the query heads reading it) whose o_proj
  columns are all zero, or whose v rows (and bias) are - either way it adds nothing;
- an FFN neuron whose output column is zero, or one of whose input rows (and bias) is zero:
  SiLU, GELU and ReLU all map 0 to 0, so a zero gate, up or fc1 pre-activation silences it.
- a hidden dimension nothing writes to (its embedding column and its o_proj / down_proj rows
  in every layer are zero, as Compresso leaves them): RMSNorm then sees a zero there, so the
  dimension goes from every linear, the embedding and the head, and each norm keeps its output
  by scaling its weight by sqrt(d / d') and its epsilon by d / d' (mean over d' not d).
At least one unit and one neuron per layer stay so every layer keeps a valid shape. The output
bias (o_proj / fc2) is untouched, so the compacted model's logits equal the masked model's.

Saving: `save(model, dir)` writes safetensors + config with `surgeon_layer_shapes` (heads, KV
heads, FFN width per layer). When every layer has the same shape and the architecture can take
it from its config, the config's own fields are set too and transformers' `from_pretrained`
loads the model as is; otherwise `surgeon.compact.load(dir)` builds the per-layer shapes first.
"""
from pathlib import Path

import torch
from torch import nn

from surgeon.model.adapters import adapter_for


def _slice(lin: nn.Linear, rows=None, cols=None) -> nn.Linear:
    W = lin.weight.data
    W = W if rows is None else W[rows]
    W = W if cols is None else W[:, cols]
    new = nn.Linear(W.shape[1], W.shape[0], bias=lin.bias is not None, device=W.device, dtype=W.dtype)
    new.weight.data.copy_(W)
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.data if rows is None else lin.bias.data[rows])
    return new


def _replace(layer: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in layer.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise ValueError("module not found in layer")


def _dead_rows(lin: nn.Linear) -> torch.Tensor:
    dead = (lin.weight == 0).all(1)
    return dead if lin.bias is None else dead & (lin.bias == 0)


def zero_rows(lin: nn.Linear, rows: torch.Tensor) -> None:
    """Removes output rows (weight and bias) so that compaction reads them as dead."""
    lin.weight.data[rows] = 0.0
    if lin.bias is not None:
        lin.bias.data[rows] = 0.0


def _keep_one(dead: torch.Tensor) -> torch.Tensor:
    if dead.all():
        dead = dead.clone()
        dead[0] = False
    return dead


def layer_plan(adapter, layer) -> dict:
    """Which attention units and FFN neurons of `layer` can be removed without changing it."""
    att, mlp = adapter.attention(layer), adapter.mlp(layer)
    hd, rep = att.head_dim, att.num_heads // att.num_kv_heads
    o_dead = (att.o.weight == 0).all(0).view(att.num_kv_heads, rep * hd).all(1)
    v_dead = _dead_rows(att.v).view(att.num_kv_heads, hd).all(1)
    units_dead = _keep_one(o_dead | v_dead)
    neurons_dead = (mlp.output.weight == 0).all(0)
    for lin in mlp.inputs:
        neurons_dead |= _dead_rows(lin)
    neurons_dead = _keep_one(neurons_dead)
    return {"units_keep": (~units_dead).nonzero().flatten(), "neurons_keep": (~neurons_dead).nonzero().flatten()}


def _resize(adapter, layer, units: torch.Tensor, neurons: torch.Tensor) -> dict:
    """Keeps only attention units `units` and FFN neurons `neurons` of `layer`; returns its shape."""
    att, mlp = adapter.attention(layer), adapter.mlp(layer)
    hd, rep = att.head_dim, att.num_heads // att.num_kv_heads
    q_rows = (units.view(-1, 1) * rep * hd + torch.arange(rep * hd)).flatten()
    kv_rows = (units.view(-1, 1) * hd + torch.arange(hd)).flatten()
    _replace(layer, att.q, _slice(att.q, rows=q_rows))
    _replace(layer, att.k, _slice(att.k, rows=kv_rows))
    _replace(layer, att.v, _slice(att.v, rows=kv_rows))
    _replace(layer, att.o, _slice(att.o, cols=q_rows))
    adapter.set_head_counts(layer, len(units) * rep, len(units))
    for lin in mlp.inputs:
        _replace(layer, lin, _slice(lin, rows=neurons))
    _replace(layer, mlp.output, _slice(mlp.output, cols=neurons))
    return {"num_heads": len(units) * rep, "num_kv_heads": len(units), "ffn": len(neurons)}


def hidden_plan(adapter) -> torch.Tensor | None:
    """The hidden dimensions something writes to, or None when all of them are (or the
    architecture's norms cannot lose dimensions exactly)."""
    if not adapter.hidden_prunable:
        return None
    dead = (adapter.embeddings().weight == 0).all(0)
    for layer in adapter.layers():
        dead &= _dead_rows(adapter.attention(layer).o) & _dead_rows(adapter.mlp(layer).output)
    dead = _keep_one(dead)
    return (~dead).nonzero().flatten() if dead.any() else None


def _shrink_hidden(model, adapter, keep: torch.Tensor) -> None:
    d, d_new = adapter.embeddings().weight.shape[1], len(keep)
    old = adapter.embeddings()
    emb = nn.Embedding(old.num_embeddings, d_new, padding_idx=old.padding_idx, device=old.weight.device,
                       dtype=old.weight.dtype)
    emb.weight.data.copy_(old.weight.data[:, keep])
    adapter.decoder().embed_tokens = emb
    for layer in adapter.layers():
        att, mlp = adapter.attention(layer), adapter.mlp(layer)
        for lin in (att.q, att.k, att.v, *mlp.inputs):
            _replace(layer, lin, _slice(lin, cols=keep))
        for lin in (att.o, mlp.output):
            _replace(layer, lin, _slice(lin, rows=keep))
    for norm in adapter.hidden_norms():
        norm.weight = nn.Parameter(norm.weight.data[keep] * (d / d_new) ** 0.5)
        norm.variance_epsilon *= d / d_new
    head = model.get_output_embeddings()
    new_head = _slice(head, cols=keep)
    if getattr(model.config, "tie_word_embeddings", False):
        new_head.weight = emb.weight
    model.set_output_embeddings(new_head)
    cfg = model.config
    cfg.head_dim = adapter.attention(adapter.layers()[0]).head_dim  # no longer hidden / heads
    cfg.rms_norm_eps *= d / d_new
    cfg.hidden_size = d_new


@torch.no_grad()
def compact(model) -> list[dict]:
    """Removes every dead unit, neuron and hidden dimension in place; returns the per-layer shapes."""
    adapter = adapter_for(model)
    shapes = []
    for layer in adapter.layers():
        plan = layer_plan(adapter, layer)
        shapes.append(_resize(adapter, layer, plan["units_keep"], plan["neurons_keep"]))
    keep = hidden_plan(adapter)
    if keep is not None:
        _shrink_hidden(model, adapter, keep)
    _describe(model, adapter, shapes)
    return shapes


def _describe(model, adapter, shapes: list[dict]) -> None:
    """Records the shapes in the config; sets the config's own fields when transformers can
    build every layer from them (uniform shapes; explicit head_dim, or head counts unchanged)."""
    cfg = model.config
    cfg.surgeon_layer_shapes = shapes
    uniform = all(s == shapes[0] for s in shapes)
    heads_same = shapes[0]["num_heads"] == cfg.num_attention_heads
    explicit_head_dim = getattr(cfg, "head_dim", None) is not None
    divides = cfg.hidden_size % shapes[0]["num_heads"] == 0  # transformers' configs check this
    if uniform and (heads_same or explicit_head_dim) and divides:
        cfg.num_attention_heads = shapes[0]["num_heads"]
        if hasattr(cfg, "num_key_value_heads"):
            cfg.num_key_value_heads = shapes[0]["num_kv_heads"]
        setattr(cfg, adapter.ffn_config_key, shapes[0]["ffn"])
        cfg.surgeon_native = True
    else:
        cfg.surgeon_native = False


def save(model, tokenizer, directory) -> int:
    """save_pretrained (safetensors); returns the size of the weight files in bytes."""
    directory = Path(directory)
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


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
    for layer, s in zip(adapter.layers(), shapes):  # the shapes only; the weights come next
        _resize(adapter, layer, torch.arange(s["num_kv_heads"]), torch.arange(s["ffn"]))
    state = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"compacted checkpoint does not fit: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())

