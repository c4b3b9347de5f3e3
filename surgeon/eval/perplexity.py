"""Perplexity over non-overlapping windows (the SparseGPT / LLM Surgeon protocol).

Each window is scored on its own (no context carried across windows), every token but the first
is a target, and perplexity is exp(total NLL / total targets). With the whole model on the device
(`perplexity`), or with one decoder layer there at a time for models larger than the device
(`perplexity_layerwise`: the same figure). Dense results are cached per (weights, protocol) so a
sweep computes them once.
"""
import hashlib
import json
import logging
import math

import torch
import torch.nn.functional as F

from surgeon import assets, cache, engine
from surgeon.data.windows import eval_windows
from surgeon.model.adapters import adapter_for
from surgeon.model.placement import HOME, on_device
from surgeon.tracking.results import write_json_atomic

log = logging.getLogger(__name__)


def _inputs(batch: torch.Tensor, prefix: torch.Tensor | None, bos: bool) -> torch.Tensor:
    """`prefix` (1-D token ids, e.g. a prompt) is read before every window and never scored;
    the targets stay each window's tokens after its first, so the figures compare with and
    without it. With `bos` the prefix carries the BOS and the window's own BOS is dropped."""
    if prefix is None:
        return batch
    return torch.cat([prefix.to(batch.device).expand(len(batch), -1), batch[:, int(bos):]], 1)


def window_nll(logits: torch.Tensor, batch: torch.Tensor) -> float:
    """Summed NLL of each window's tokens after its first, from the logits of the input's end."""
    logits = logits[:, -batch.shape[1]:-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum").item()


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, device, batch_size: int = 1, prefix: torch.Tensor | None = None,
               bos: bool = False) -> float:
    """The model is on `device`."""
    nll = 0.0
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        nll += window_nll(model(_inputs(batch, prefix, bos), use_cache=False).logits, batch)
    return math.exp(nll / windows[:, 1:].numel())


@torch.no_grad()
def perplexity_layerwise(adapter, windows: torch.Tensor, device, prefix: torch.Tensor | None = None,
                         bos: bool = False) -> float:
    """The same figure with one decoder layer on `device` at a time: every window's input to the
    current layer is kept in host memory, the logits come from the model's own head."""
    inputs = _inputs(windows, prefix, bos)
    with on_device(engine.trunk(adapter), device):
        data = engine.capture(adapter, inputs, device)
    hidden = [x.to(HOME) for x in data.inputs]
    for i, layer in enumerate(adapter.layers()):
        with on_device(layer, device):
            hidden = [y.to(HOME) for y in engine.forward_layer(layer, [x.to(device) for x in hidden],
                                                                data.layer_kwargs[i])]
    nll = 0.0
    with on_device([*engine.trunk(adapter), adapter.model.get_output_embeddings()], device):
        for x, ids, w in zip(hidden, inputs, windows):
            logits = engine.head_logits(adapter, ids.unsqueeze(0).to(device), x.to(device))
            nll += window_nll(logits, w.unsqueeze(0).to(device))
    return math.exp(nll / windows[:, 1:].numel())


def protocol(cfg_eval, windows_by_corpus: dict) -> dict:
    return {"seq_len": int(cfg_eval.seq_len), "max_tokens": cfg_eval.max_tokens,
            "tokens": {name: int(w.numel()) for name, w in windows_by_corpus.items()},
            "windows": "non-overlapping, no context across windows"}


def build_windows(cfg_eval, tokenizer, bos_id) -> dict:
    return {name: eval_windows(name, tokenizer, int(cfg_eval.seq_len), cfg_eval.max_tokens, bos_id)
            for name in cfg_eval.corpora}


def evaluate(model, windows_by_corpus: dict, device, batch_size: int, progress=None, prefix=None,
             bos: bool = False, layerwise: bool = False) -> dict:
    """{corpus: perplexity}; `layerwise`: one decoder layer on the device at a time, else the model
    is on the device already."""
    out = {}
    for name, windows in windows_by_corpus.items():
        out[name] = (perplexity_layerwise(adapter_for(model), windows, device, prefix, bos) if layerwise
                     else perplexity(model, windows, device, batch_size, prefix, bos))
        if progress:
            progress(f"ppl {name}: {out[name]:.3f}")
    return out


def dense_cached(key_parts: dict, compute, folder: str = "dense_ppl") -> dict:
    """Dense figures (perplexity, zero-shot accuracy) are a property of the model's weights and
    the protocol, not of the run: cached under a key of both. Measured under the entry's lock, so
    parallel sweep jobs of one model measure them once (a dense zero-shot pass of a 0.5B model takes
    most of an hour on a CPU) and the others wait for the lock, then read them."""
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:20]
    path = assets.cache_dir(folder) / f"{key}.json"
    with cache.building(path):
        if path.exists():
            try:
                return json.loads(path.read_text())["ppl"]
            except (ValueError, KeyError) as e:
                log.warning("dense cache %s does not read (%s); measuring again", path, e)
        ppl = compute()
        write_json_atomic(path, {"key": key_parts, "ppl": ppl})
    return ppl
