"""Gemma 2: Gemma 3's layout (post-sublayer norms, scaled embeddings, alternating sliding and
global layers) with attention and final logit soft-capping instead of q/k norms. Soft-capping
sits in the attention kernel and after the head, which the engine runs as the model's own code."""
from surgeon.model.adapters.gemma3 import Gemma3Adapter


class Gemma2Adapter(Gemma3Adapter):
    model_types = ("gemma2",)
