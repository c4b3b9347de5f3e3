"""Methods compose the shared parts; `conf/method/*.yaml` are the paper presets.

`Method` prunes from curvature (one-shot or multi-shot); the methods in TRAINED learn what to
remove by training instead and bring their own loop."""
from surgeon.method import compresso
from surgeon.method.prune import Method

TRAINED = {"compresso": compresso}

__all__ = ["Method", "TRAINED"]
