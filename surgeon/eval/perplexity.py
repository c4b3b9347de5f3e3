"""Perplexity over non-overlapping windows (the SparseGPT / LLM Surgeon protocol).

Each window is scored on its own (no context carried across windows), every token but the first
is a target, and perplexity is exp(total NLL / total targets). Dense results are cached per
(model, corpus, protocol) so a sweep computes them once.
"""
import hashlib
import json
import math

import torch
import torch.nn.functional as F

from surgeon import assets
from surgeon.data.windows import eval_windows
from surgeon.tracking.results import write_json_atomic


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, device, batch_size: int = 1, prefix: torch.Tensor | None = None,
               bos: bool = False) -> float:
    """`prefix` (1-D token ids, e.g. a prompt) is read before every window and never scored;
    the targets stay each window's tokens after its first, so the figures compare with and
    without it. With `bos` the prefix carries the BOS and the window's own BOS is dropped."""
    nll, count = 0.0, 0
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        inputs = batch
        if prefix is not None:
            inputs = torch.cat([prefix.to(device).expand(len(batch), -1), batch[:, int(bos):]], 1)
        logits = model(inputs, use_cache=False).logits[:, -batch.shape[1]:-1].float()
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                               reduction="sum").item()
        count += batch[:, 1:].numel()
    return math.exp(nll / count)


def protocol(cfg_eval, windows_by_corpus: dict) -> dict:
    return {"seq_len": int(cfg_eval.seq_len), "max_tokens": cfg_eval.max_tokens,
            "tokens": {name: int(w.numel()) for name, w in windows_by_corpus.items()},
            "windows": "non-overlapping, no context across windows"}


def build_windows(cfg_eval, tokenizer, bos_id) -> dict:
    return {name: eval_windows(name, tokenizer, int(cfg_eval.seq_len), cfg_eval.max_tokens, bos_id)
            for name in cfg_eval.corpora}


def evaluate(model, windows_by_corpus: dict, device, batch_size: int, progress=None, prefix=None,
             bos: bool = False) -> dict:
    out = {}
    for name, windows in windows_by_corpus.items():
        out[name] = perplexity(model, windows, device, batch_size, prefix, bos)
        if progress:
            progress(f"ppl {name}: {out[name]:.3f}")
    return out


def dense_cached(key_parts: dict, compute, folder: str = "dense_ppl") -> dict:
    """Dense figures (perplexity, zero-shot accuracy) are a property of the model and protocol,
    not of the run."""
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:20]
    path = assets.cache_dir(folder) / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())["ppl"]
    ppl = compute()
    write_json_atomic(path, {"key": key_parts, "ppl": ppl})
    return ppl
