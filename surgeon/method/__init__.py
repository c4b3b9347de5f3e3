"""Methods compose the shared parts; `conf/method/*.yaml` are the paper presets."""
from surgeon.method.prune import Method

__all__ = ["Method"]
