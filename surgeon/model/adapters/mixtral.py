"""Mixtral (and Qwen2-MoE / Qwen3-MoE, which differ only in names, a shared expert and q/k norms):
Llama-style attention; the FFN is a router over experts (surgeon/model/adapters/experts.py),
plus - Qwen2-MoE - a shared expert that every token passes through. Each expert is an FFN of its
own to every method, with statistics from the tokens routed to it. Layers that some Qwen-MoE
configs keep dense (`mlp_only_layers`) are plain gated FFNs. The router reads the hidden state
through a bare parameter, so hidden dimensions are never pruned; expert widths stay as they are
when compacting (a packed checkpoint needs one width for all experts); whole experts can go
(`drop_experts`), with their router rows, as long as every layer keeps the same number (the
config holds one count).
"""
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.model.adapters.base import Mlp
from surgeon.model.adapters.experts import unpack
from surgeon.model.adapters.llama import LlamaAdapter


class MixtralAdapter(LlamaAdapter):
    model_types = ("mixtral", "qwen2_moe", "qwen3_moe")
    hidden_prunable = False

    def __init__(self, model):
        super().__init__(model)
        for layer in self.layers():
            if hasattr(layer.mlp, "experts"):
                unpack(layer.mlp)

    def experts(self, layer):
        return getattr(layer.mlp, "experts", None)

    def experts_per_token(self) -> int:
        return self.config.num_experts_per_tok

    def drop_experts(self, layer, keep):
        router = layer.mlp.gate
        router.weight = nn.Parameter(router.weight.data[keep])
        router.num_experts = len(keep)
        layer.mlp.experts.keep(keep)
        key = "num_local_experts" if self.config.model_type == "mixtral" else "num_experts"
        setattr(self.config, key, len(keep))

    def mlps(self, layer) -> list[Mlp]:
        m = layer.mlp
        if not hasattr(m, "experts"):  # a dense layer of a Qwen-MoE model
            return [Mlp([m.gate_proj, m.up_proj], m.down_proj)]
        shared = getattr(m, "shared_expert", None)
        return m.experts.mlps() + ([Mlp([shared.gate_proj, shared.up_proj], shared.down_proj)] if shared else [])

    def mlp(self, layer) -> Mlp:
        raise SurgeonError("a mixture-of-experts layer has one FFN per expert: ask the adapter's mlps(layer)")

    def drop_layers(self, keep):
        """Qwen-MoE configs say which layers are dense by index (`mlp_only_layers`, and every
        `decoder_sparse_step`-th layer sparse): after dropping layers they name the kept ones."""
        super().drop_layers(keep)
        if hasattr(self.config, "mlp_only_layers"):
            self.config.mlp_only_layers = [j for j, layer in enumerate(self.layers()) if not hasattr(layer.mlp, "experts")]
            self.config.decoder_sparse_step = 1

    def resize(self, layer, keep):
        """Attention units only: every expert keeps its width."""
        for units in self.units(layer)[1:]:
            if len(keep.get(units.kind, range(units.count))) != units.count:
                raise SurgeonError("compaction would give experts different widths, which a packed checkpoint "
                                   "cannot hold: prune experts' neurons with compact=false")
        shape = super().resize(layer, {u.kind: keep.get(u.kind, range(u.count)) for u in self.units(layer)})
        return {**shape, "ffn": None}
