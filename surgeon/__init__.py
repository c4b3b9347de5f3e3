"""surgeon: Hydra-configured post-training compression of large language models."""

__version__ = "0.1.0"
