"""Qwen2 / Qwen2.5: Llama layout plus biases on q/k/v (which compaction must slice too)."""
from surgeon.model.adapters.llama import LlamaAdapter


class Qwen2Adapter(LlamaAdapter):
    model_types = ("qwen2",)
