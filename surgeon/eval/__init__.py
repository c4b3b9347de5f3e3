"""Evaluation: perplexity on named corpora, zero-shot accuracy, latency (`eval=<preset>`)."""
from surgeon.eval import zero_shot
from surgeon.eval.evaluator import Evaluator
from surgeon.eval.perplexity import build_windows, evaluate, perplexity, protocol

__all__ = ["Evaluator", "build_windows", "evaluate", "perplexity", "protocol", "zero_shot"]
