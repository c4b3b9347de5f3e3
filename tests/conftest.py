import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from surgeon.config import CONF_DIR

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture
def compose_cfg():
    """Compose the real config tree with overrides, as the command line would."""
    def _compose(*overrides):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=False)
    return _compose


def tiny_model(name: str, vocab: int = 256):
    from surgeon.model.load import _tiny

    cfg = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    cfg.config.vocab_size = vocab
    return _tiny(cfg, torch.float32)


TINY = ["tiny_llama", "tiny_opt", "tiny_qwen2", "tiny_gemma3", "tiny_mistral", "tiny_qwen3", "tiny_gemma2", "tiny_llama3",
        "tiny_phi3", "tiny_mixtral", "tiny_qwen2_moe", "tiny_qwen3_moe"]
MOE = ["tiny_mixtral", "tiny_qwen2_moe", "tiny_qwen3_moe"]


def method_cfg(**overrides):
    """A method's options: the shared defaults (conf/method/_base.yaml) with `overrides`."""
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "method" / "_base.yaml"), overrides)


def curvature_cfg(name: str, **overrides):
    """`curvature=<name>`'s options (conf/curvature/<name>.yaml) with `overrides`."""
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "curvature" / f"{name}.yaml"), overrides)


def prune(adapter, method, sparsity, windows=None, seed: int = 0, timings: dict | None = None) -> list[dict]:
    """One step of `method` on the CPU, as a schedule's shot runs it."""
    from surgeon.context import Context
    from surgeon.tracking.wandb_logger import NoLogger

    ctx = Context(adapter, None, windows, torch.device("cpu"), seed, None, NoLogger(), None)
    return method.step(ctx, sparsity, seed, {} if timings is None else timings)
