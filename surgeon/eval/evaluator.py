"""The run's evaluation: perplexity on the eval corpora and zero-shot accuracy, each computed
with the whole model in one device context (surgeon/model/placement.py), and the dense figures
cached per (model, protocol)."""
import logging

import torch
from omegaconf import OmegaConf

from surgeon.eval import perplexity as ppl
from surgeon.eval import zero_shot
from surgeon.model.placement import on_device

log = logging.getLogger("surgeon")


class Evaluator:
    def __init__(self, cfg, tokenizer, bos_id: int | None, device: torch.device):
        self.cfg, self.tokenizer, self.bos, self.device = cfg, tokenizer, bos_id, device
        self.windows = ppl.build_windows(cfg, tokenizer, bos_id)
        self.protocol = ppl.protocol(cfg, self.windows)

    @property
    def zero_shot_on(self) -> bool:
        return bool(self.cfg.zero_shot.tasks)

    def layerwise(self, model) -> bool:
        """Perplexity one decoder layer at a time: as `eval.layerwise` says, or (auto) when the
        model's parameters would fill more than 80% of the free memory of an accelerator."""
        if self.cfg.layerwise != "auto":
            return bool(self.cfg.layerwise)
        if self.device.type != "cuda":
            return False
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        return size > 0.8 * torch.cuda.mem_get_info(self.device)[0]

    def perplexity(self, model, tag: str, max_tokens: int | None = None, prefix=None) -> dict:
        """{corpus: perplexity}, on the first `max_tokens` tokens of each corpus (None: all)."""
        windows = {c: w if max_tokens is None else w[: max(1, int(max_tokens) // w.shape[1])]
                   for c, w in self.windows.items()}
        progress = lambda m: log.info("%s %s", tag, m)  # noqa: E731
        if self.layerwise(model):
            return ppl.evaluate(model, windows, self.device, int(self.cfg.batch_size), progress, prefix,
                                self.bos is not None, layerwise=True)
        with on_device(model, self.device):
            return ppl.evaluate(model, windows, self.device, int(self.cfg.batch_size), progress, prefix,
                                self.bos is not None)

    def zero_shot(self, model) -> dict:
        with on_device(model, self.device):
            return zero_shot.evaluate(model, self.tokenizer, self.cfg.zero_shot, self.device, self.bos is not None)

    def dense(self, load_model, model_key: dict) -> tuple[dict, dict | None]:
        """(perplexity, zero-shot accuracy or None) of the dense model."""
        return self.dense_perplexity(load_model, model_key), self.dense_zero_shot(load_model, model_key)

    def dense_perplexity(self, load_model, model_key: dict) -> dict:
        """The dense model's perplexity, from the cache when `eval.cache_dense` (dense figures are
        properties of the model and the protocol, not of the run). `load_model()` gives the dense
        model; it is called only when something must be measured."""
        key = {**model_key, **{k: v for k, v in self.protocol.items() if k != "windows"}}
        return self._cached(key, lambda: self.perplexity(load_model(), "dense"), "dense_ppl")

    def dense_zero_shot(self, load_model, model_key: dict) -> dict | None:
        """The dense model's zero-shot accuracy (None without tasks), cached as `dense_perplexity`."""
        if not self.zero_shot_on:
            return None
        key = {**model_key, **OmegaConf.to_container(self.cfg.zero_shot, resolve=True)}
        return self._cached(key, lambda: self.zero_shot(load_model()), "dense_zero_shot")

    def _cached(self, key: dict, compute, folder: str) -> dict:
        return ppl.dense_cached(key, compute, folder) if self.cfg.cache_dense else compute()
