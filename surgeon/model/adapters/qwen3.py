"""Qwen3: Llama layout, no q/k/v biases, RMSNorms on each head's queries and keys. Those norms run
over head_dim, shared by every head, so removing heads leaves them as they are."""
from surgeon.model.adapters.llama import LlamaAdapter


class Qwen3Adapter(LlamaAdapter):
    model_types = ("qwen3",)
