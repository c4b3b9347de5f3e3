"""Real speed from 2:4 sparsity: the pruned linears as torch semi-structured sparse tensors
(`to_sparse_semi_structured`: cuSPARSELt, else CUTLASS kernels on sparse tensor cores), and the
model's prefill and decode latency against the same model dense, in float16 on a CUDA device of
compute capability >= 8.0. Elsewhere the run records that it was not accelerated, and why.

Only linears whose every group of 4 consecutive input weights holds at least 2 zeros, and whose
shape fits the kernels' minimum tiles, are converted; results.json says how many. The model is
converted in place, so this runs last (after evaluation and saving).
"""
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def is_2_4(W: torch.Tensor) -> bool:
    """Every group of 4 consecutive weights along a row has at least 2 zeros."""
    if W.shape[1] % 4:
        return False
    return bool(((W.view(W.shape[0], -1, 4) == 0).sum(-1) >= 2).all())


def unavailable(device: torch.device) -> str | None:
    """Why this device cannot run the kernels (None: it can)."""
    if device.type != "cuda":
        return f"not accelerated: semi-structured sparse kernels need a CUDA device (this run: {device.type})"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"not accelerated: sparse tensor cores need compute capability >= 8.0 (this device: {major}.{minor})"
    return None


def _fits(lin: nn.Linear, cls) -> bool:
    c = cls._DTYPE_SHAPE_CONSTRAINTS.get(torch.float16)
    return c is not None and lin.out_features % c.sparse_min_rows == 0 and lin.in_features % c.sparse_min_cols == 0


@torch.no_grad()
def convert(adapter) -> int:
    """Replaces every 2:4 prunable linear's weight by its semi-structured form; returns how many."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured
    from torch.sparse.semi_structured import SparseSemiStructuredTensorCUTLASS

    n = 0
    for layer in adapter.layers():
        for lin in adapter.prunable_linears(layer).values():
            if not is_2_4(lin.weight) or not _fits(lin, SparseSemiStructuredTensorCUTLASS):
                continue
            try:
                sparse = to_sparse_semi_structured(lin.weight.data)
            except (RuntimeError, NotImplementedError):  # no cuSPARSELt in this build: CUTLASS
                SparseSemiStructuredTensor._FORCE_CUTLASS = True
                sparse = to_sparse_semi_structured(lin.weight.data)
            lin.weight = nn.Parameter(sparse, requires_grad=False)
            n += 1
    return n


def measure(adapter, device: torch.device, latency: dict, probe: torch.Tensor) -> dict:
    """Latency dense vs converted (float16) and the largest logit difference on `probe`."""
    from surgeon.eval.latency import prefill_decode_ms

    why = unavailable(device)
    if why:
        log.info("2:4 speed: %s", why)
        return {"accelerated": False, "reason": why}
    model = adapter.model.to(device=device, dtype=torch.float16).eval()
    probe = probe.to(device)
    with torch.no_grad():
        dense_logits = model(probe).logits.float()
    dense = prefill_decode_ms(model, device, **latency)
    converted = convert(adapter)
    with torch.no_grad():
        diff = (model(probe).logits.float() - dense_logits).abs().max().item()
    sparse = prefill_decode_ms(model, device, **latency)
    out = {"accelerated": converted > 0, "dtype": "float16", "linears_converted": converted,
           "device": torch.cuda.get_device_name(device), "dense": dense, "sparse": sparse,
           "speedup_prefill": dense["prefill_ms"] / sparse["prefill_ms"],
           "speedup_decode": dense["decode_ms_per_token"] / max(sparse["decode_ms_per_token"], 1e-9),
           "max_logit_diff": diff, "latency": latency}
    log.info("2:4 speed (%d linears, float16): prefill %.2f -> %.2f ms, decode %.2f -> %.2f ms/token", converted,
             dense["prefill_ms"], sparse["prefill_ms"], dense["decode_ms_per_token"], sparse["decode_ms_per_token"])
    return out
