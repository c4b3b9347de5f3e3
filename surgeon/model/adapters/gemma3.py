"""Gemma 3 (text): Llama-like projections with q/k norms and sliding-window layers.

Per-layer attention masks and rotary tables differ between sliding and global layers; the engine
records each layer's own call arguments, so nothing special is needed here.
"""
from surgeon.model.adapters.llama import LlamaAdapter


class Gemma3Adapter(LlamaAdapter):
    model_types = ("gemma3_text",)
    hidden_prunable = False  # post-sublayer norms and an embedding scale tied to hidden_size
