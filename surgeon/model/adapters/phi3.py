"""Phi-3: Llama-like, with q/k/v fused in one `qkv_proj` and gate/up in one `gate_up_proj`.

The adapter shows the fused projections as their parts (`Fused`: q, k, v; gate, up), so methods,
statistics and compaction see q/k/v and gate/up as everywhere else; the model's own code still
calls one module that concatenates the parts, and the state dict (hence `save_pretrained`) keeps
the fused layout, so a saved model is a plain Phi-3 checkpoint. Phi-3's attention slices q/k/v
at `config.num_attention_heads`, so a layer with its own head count gets its own config copy.
"""
import copy

import torch
from torch import nn

from surgeon.model.adapters.base import Attention, Mlp, attention_geometry
from surgeon.model.adapters.llama import LlamaAdapter


class Fused(nn.Module):
    """A fused linear as its parts: the output is the parts' outputs concatenated; the state dict
    holds the fused `weight` (and `bias`), split back into the parts on loading."""

    def __init__(self, lin: nn.Linear, sizes: dict[str, int]):
        super().__init__()
        bias = lin.bias is not None
        self.parts = nn.ModuleDict()
        for (name, n), W, b in zip(sizes.items(), lin.weight.data.split(list(sizes.values())),
                                   lin.bias.data.split(list(sizes.values())) if bias else [None] * len(sizes)):
            part = nn.Linear(lin.in_features, n, bias=bias, device=W.device, dtype=W.dtype)
            part.weight.data.copy_(W)
            if bias:
                part.bias.data.copy_(b)
            self.parts[name] = part
        self._register_state_dict_hook(Fused._fuse)
        self._register_load_state_dict_pre_hook(self._split)

    def forward(self, x):
        return torch.cat([p(x) for p in self.parts.values()], dim=-1)

    @staticmethod
    def _fuse(module, state, prefix, meta):
        for kind in ("weight", "bias"):
            keys = [f"{prefix}parts.{n}.{kind}" for n in module.parts]
            if all(k in state for k in keys):
                state[f"{prefix}{kind}"] = torch.cat([state.pop(k) for k in keys])
        return state

    def _split(self, state, prefix, meta, strict, missing, unexpected, errors):
        sizes = [p.out_features for p in self.parts.values()]
        for kind in ("weight", "bias"):
            if f"{prefix}{kind}" in state:
                for n, t in zip(self.parts, state.pop(f"{prefix}{kind}").split(sizes)):
                    state[f"{prefix}parts.{n}.{kind}"] = t


class Phi3Adapter(LlamaAdapter):
    model_types = ("phi3",)

    def __init__(self, model):
        super().__init__(model)
        for layer in self.layers():  # once: later adapters of the model find the parts in place
            a, m = layer.self_attn, layer.mlp
            if not isinstance(a.qkv_proj, Fused):
                q = a.config.num_attention_heads * a.head_dim
                kv = a.num_key_value_heads * a.head_dim
                a.qkv_proj = Fused(a.qkv_proj, {"q": q, "k": kv, "v": kv})
            if not isinstance(m.gate_up_proj, Fused):
                half = m.gate_up_proj.out_features // 2
                m.gate_up_proj = Fused(m.gate_up_proj, {"gate": half, "up": half})

    def attention(self, layer) -> Attention:
        a = layer.self_attn
        p = a.qkv_proj.parts
        heads, kv, head_dim = attention_geometry(self.config, p["q"], p["k"])
        return Attention(p["q"], p["k"], p["v"], a.o_proj, heads, kv, head_dim)

    def mlp(self, layer) -> Mlp:
        p = layer.mlp.gate_up_proj.parts
        return Mlp([p["gate"], p["up"]], layer.mlp.down_proj)

    def set_head_counts(self, layer, heads, kv_heads):
        super().set_head_counts(layer, heads, kv_heads)
        attn = layer.self_attn
        attn.config = copy.copy(attn.config)
        attn.config.num_attention_heads, attn.config.num_key_value_heads = heads, kv_heads
