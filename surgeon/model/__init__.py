"""Models: loading (`load.py`) and architecture adapters (`adapters/`)."""
from surgeon.model.adapters import Adapter, adapter_for
from surgeon.model.load import check, dense_key, load, weights_id

__all__ = ["Adapter", "adapter_for", "check", "dense_key", "load", "weights_id"]
