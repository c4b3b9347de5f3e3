"""Llama family (Llama 2/3, SmolLM2, Mistral): gated SiLU MLP, grouped-query attention."""
from surgeon.model.adapters.base import Adapter, Attention, Mlp, attention_geometry


class LlamaAdapter(Adapter):
    model_types = ("llama", "mistral")
    hidden_prunable = True

    def hidden_norms(self):
        return [n for layer in self.layers() for n in (layer.input_layernorm, layer.post_attention_layernorm)] + \
            [self.decoder().norm]

    def attention(self, layer) -> Attention:
        a = layer.self_attn
        heads, kv, head_dim = attention_geometry(self.config, a.q_proj, a.k_proj)
        return Attention(a.q_proj, a.k_proj, a.v_proj, a.o_proj, heads, kv, head_dim)

    def mlp(self, layer) -> Mlp:
        m = layer.mlp
        return Mlp([m.gate_proj, m.up_proj], m.down_proj)
