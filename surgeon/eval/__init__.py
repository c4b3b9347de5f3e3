"""Evaluation: perplexity on named corpora (`eval=<preset>`)."""
from surgeon.eval.perplexity import build_windows, dense_cached, evaluate, perplexity, protocol

__all__ = ["build_windows", "dense_cached", "evaluate", "perplexity", "protocol"]
