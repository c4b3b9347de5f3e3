"""The architecture adapter: the only code that knows module names such as `q_proj` or `fc1`.

Everything else asks an adapter for the decoder layers, the prunable linears of a layer and the
structures of a layer (attention heads grouped by KV head, FFN neurons), so supporting a new
decoder-only family is one small subclass.
"""
from dataclasses import dataclass

from torch import nn


@dataclass
class Attention:
    """The projections of one attention block and its head geometry (GQA: heads share KV)."""
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass
class Mlp:
    """`inputs` map the hidden state to the FFN neurons (gate/up or fc1); `output` maps back."""
    inputs: list[nn.Linear]
    output: nn.Linear


class Adapter:
    model_types: tuple[str, ...] = ()
    ffn_config_key = "intermediate_size"  # the config field of the FFN width
    # Hidden dimensions can be dropped exactly only where every norm over them is an RMSNorm
    # fed by the residual stream (a zero dimension changes no statistic but the count d).
    hidden_prunable = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # -- subclasses fill these in --------------------------------------------------------------
    def decoder(self) -> nn.Module:
        """The module that owns `layers` (and the embeddings / final norm)."""
        return self.model.model

    def attention(self, layer: nn.Module) -> Attention:
        raise NotImplementedError

    def mlp(self, layer: nn.Module) -> Mlp:
        raise NotImplementedError

    def set_head_counts(self, layer: nn.Module, heads: int, kv_heads: int) -> None:
        """After compaction: attention modules that keep head counts as attributes get the new ones."""
        attn = layer.self_attn
        for name, value in (("num_heads", heads), ("num_attention_heads", heads),
                            ("num_key_value_heads", kv_heads), ("num_kv_heads", kv_heads)):
            if isinstance(getattr(attn, name, None), int):
                setattr(attn, name, value)

    def hidden_norms(self) -> list[nn.Module]:
        """Every norm over the hidden dimension (hidden_prunable adapters only)."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def embeddings(self) -> nn.Embedding:
        return self.decoder().embed_tokens

    def layers(self) -> nn.ModuleList:
        return self.decoder().layers

    def prunable_linears(self, layer: nn.Module) -> dict[str, nn.Linear]:
        """The decoder layer's linears, by their name inside the layer, in forward order."""
        att, mlp = self.attention(layer), self.mlp(layer)
        mods = [att.q, att.k, att.v, att.o, *mlp.inputs, mlp.output]
        names = {id(m): n for n, m in layer.named_modules()}
        return {names[id(m)]: m for m in mods}

    def prunable_parameters(self) -> int:
        return sum(lin.weight.numel() for layer in self.layers()
                   for lin in self.prunable_linears(layer).values())

    def nonzero_prunable_parameters(self) -> int:
        return sum(int((lin.weight != 0).sum()) for layer in self.layers()
                   for lin in self.prunable_linears(layer).values())


def attention_geometry(config, q: nn.Linear, k: nn.Linear) -> tuple[int, int, int]:
    """(heads, kv heads, head_dim) of one layer, read from its projections' shapes: after
    compaction layers may have fewer heads than the config says."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return q.out_features // head_dim, k.out_features // head_dim, head_dim
