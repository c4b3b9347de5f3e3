"""Evaluation: perplexity on named corpora, zero-shot accuracy (`eval=<preset>`)."""
from surgeon.eval import zero_shot
from surgeon.eval.perplexity import build_windows, dense_cached, evaluate, perplexity, protocol

__all__ = ["build_windows", "dense_cached", "evaluate", "perplexity", "protocol", "zero_shot"]
