"""OPT: multi-head attention with biases, ReLU MLP (fc1 -> fc2), learned positions."""
from surgeon.model.adapters.base import Adapter, Attention, Mlp, attention_geometry


class OptAdapter(Adapter):
    model_types = ("opt",)
    ffn_config_key = "ffn_dim"

    def decoder(self):
        return self.model.model.decoder

    def attention(self, layer) -> Attention:
        a = layer.self_attn
        heads, kv, head_dim = attention_geometry(self.config, a.q_proj, a.k_proj)
        return Attention(a.q_proj, a.k_proj, a.v_proj, a.out_proj, heads, kv, head_dim)

    def mlp(self, layer) -> Mlp:
        return Mlp([layer.fc1], layer.fc2)

    def layers_droppable(self):
        return bool(self.config.do_layer_norm_before)  # post-norm (OPT-350m) renormalizes the stream
