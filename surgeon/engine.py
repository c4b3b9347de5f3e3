"""The layer-by-layer engine: only one decoder layer is on the accelerator at a time.

1. capture: run the model's trunk (embeddings, rotary tables, masks) on the calibration windows
   with every decoder layer stubbed out, recording the inputs of layer 0 and the keyword
   arguments each layer receives (masks and position embeddings differ between Gemma 3's sliding
   and global layers, so each layer keeps its own).
2. for each layer: feed the inputs through it once with hooks that accumulate each linear's
   curvature statistics, prune, then feed them again so the *pruned* layer's outputs become the
   next layer's inputs (errors of earlier layers are seen and compensated by later ones).
This keeps a 70B model prunable on one GPU: the rest of the model stays on the CPU.
"""
import logging
import time
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)


class _Captured(Exception):
    """Raised by the last stubbed layer: the trunk ran, nothing after it needs to."""


@dataclass
class Captured:
    inputs: list[torch.Tensor]              # layer-0 inputs, one (1, seq, hidden) per window
    layer_kwargs: list[dict] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _trunk(adapter):
    """The decoder's modules other than its layers (embeddings, positions, rotary, norms)."""
    layers = adapter.layers()
    return [m for m in adapter.decoder().children() if m is not layers]


@torch.no_grad()
def capture(adapter, windows: torch.Tensor, device: torch.device) -> Captured:
    layers = adapter.layers()
    result = Captured(inputs=[], layer_kwargs=[None] * len(layers))

    def stub(i):
        def forward(hidden_states, *args, **kwargs):
            if args:
                raise TypeError("decoder layers are expected to take keyword arguments only")
            if i == 0:
                result.inputs.append(hidden_states)
            if result.layer_kwargs[i] is None:
                result.layer_kwargs[i] = kwargs
            if i == len(layers) - 1:
                raise _Captured
            return hidden_states
        return forward

    trunk = _trunk(adapter)
    for m in trunk:
        m.to(device)
    for i, layer in enumerate(layers):
        layer.forward = stub(i)  # instance attribute: shadows the class method, keeps attributes
    try:
        for w in windows:  # one window at a time: the recorded kwargs fit every later call
            try:
                adapter.model(w.unsqueeze(0).to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        for layer in layers:
            del layer.forward
    return result


@torch.no_grad()
def forward_layer(layer, inputs: list[torch.Tensor], kwargs: dict) -> list[torch.Tensor]:
    outs = []
    for x in inputs:
        y = layer(x, **kwargs)
        outs.append(y[0] if isinstance(y, tuple) else y)
    return outs


@torch.no_grad()
def prune_layerwise(adapter, windows: torch.Tensor | None, method, sparsity: float | list[float],
                    device: torch.device, offload: torch.device = torch.device("cpu")) -> list[dict]:
    """Prunes every decoder layer to `sparsity` (or layer i to sparsity[i]) with `method`;
    returns per-linear records."""
    layers = adapter.layers()
    data = capture(adapter, windows, device) if method.needs_data else None
    records = []
    for i, layer in enumerate(layers):
        t0 = time.time()
        layer.to(device)
        linears = adapter.prunable_linears(layer)
        curvs = {name: method.new_curvature(linears[name]) for name in method.measured(adapter, layer, linears)}
        if data is not None:
            hooks = [linears[name].register_forward_hook(lambda mod, inp, out, c=c: c.add_batch(inp[0]))
                     for name, c in curvs.items()]
            try:
                forward_layer(layer, data.inputs, data.layer_kwargs[i])
            finally:
                for h in hooks:
                    h.remove()
        ratio = sparsity[i] if isinstance(sparsity, (list, tuple)) else sparsity  # per-layer schedules
        records += method.prune_layer(adapter, layer, i, linears, curvs, ratio)
        del curvs
        if data is not None:
            data.inputs = forward_layer(layer, data.inputs, data.layer_kwargs[i])
        layer.to(offload)
        log.info("layer %d/%d pruned in %.1fs", i + 1, len(layers), time.time() - t0)
    if data is not None:
        for m in _trunk(adapter):
            m.to(offload)
    return records


def collect_full(adapter, windows: torch.Tensor, method, device: torch.device,
                 seed: int = 0) -> tuple[dict, dict]:
    """Statistics of every prunable linear at once, from passes of the whole model (one window
    at a time). With gradients, each window runs forward + backward on the summed next-token
    loss; parameters get no gradients (only activations do), which saves the weight-gradient
    matmuls and their memory."""
    from surgeon.curvature import needs_gradients

    grads = needs_gradients(method.curvature_cfg)
    linears = {(i, name): lin for i, layer in enumerate(adapter.layers())
               for name, lin in adapter.prunable_linears(layer).items()}
    curvs = {key: method.new_curvature(lin) for key, lin in linears.items()}

    def hook(curv):
        def fn(mod, inp, out):
            curv.add_batch(inp[0].detach())
            if grads and out.requires_grad:
                out.register_hook(lambda g: curv.add_grad(g.detach()))
        return fn

    model = adapter.model.to(device)
    hooks = [lin.register_forward_hook(hook(curvs[key])) for key, lin in linears.items()]
    if grads:  # make activations differentiable without asking for parameter gradients
        hooks.append(model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True)))
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(False)
    gen = torch.Generator(device=device).manual_seed(seed)
    try:
        for w in (windows if method.needs_data else []):
            w = w.unsqueeze(0).to(device)
            if not grads:
                with torch.no_grad():
                    model(w, use_cache=False)
                continue
            with torch.enable_grad():
                logits = model(w, use_cache=False).logits[:, :-1].float()
                if method.fisher == "true":  # labels from the model's own predictive distribution
                    with torch.no_grad():
                        labels = torch.multinomial(logits.softmax(-1).reshape(-1, logits.shape[-1]), 1,
                                                   generator=gen).view(1, -1)
                else:
                    labels = w[:, 1:]
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                         labels.reshape(-1), reduction="sum")
                loss.backward()
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return linears, curvs


def prune(adapter, windows, method, sparsity: float, device: torch.device, seed: int = 0,
          timings: dict | None = None) -> list[dict]:
    """One pruning step to `sparsity`: layer by layer when every decision is local, otherwise
    (global allocation, gradients, correlated updates) from whole-model statistics. `timings`
    receives curvature_s and update_s where the two are separate passes."""
    timings = {} if timings is None else timings
    if not method.is_global:
        return prune_layerwise(adapter, windows, method, sparsity, device)
    from surgeon.method.global_step import prune_global

    t = time.time()
    linears, curvs = collect_full(adapter, windows, method, device, seed)
    timings["curvature_s"] = time.time() - t
    log.info("curvature of %d linears estimated in %.1fs", len(linears), timings["curvature_s"])
    t = time.time()
    records = prune_global(linears, curvs, method, sparsity)
    timings["update_s"] = time.time() - t
    log.info("costs, threshold and updates in %.1fs", timings["update_s"])
    adapter.model.to("cpu")
    return records
