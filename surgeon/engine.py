"""The passes over the model that collect curvature statistics, one decoder layer on the
accelerator at a time. The statistics objects (surgeon/curvature/) are fed here; what to decide
from them is the method's (surgeon/method/prune.py).

capture: run the model's trunk (embeddings, rotary tables, masks) on the calibration windows with
  every decoder layer stubbed out, recording the inputs of layer 0 and the keyword arguments each
  layer receives (masks and position embeddings differ between Gemma 3's sliding and global
  layers, so each layer keeps its own).
sequential: for each layer, feed its inputs through it once with hooks that feed its statistics,
  let the method prune it, then feed them again so the *pruned* layer's outputs become the next
  layer's inputs (errors of earlier layers are seen and compensated by later ones).
whole_model: statistics of every layer before any decision (a global threshold compares them all):
  without gradients, layer by layer as above with nothing pruned; with gradients, forward +
  backward passes of the model over each window.
A statistics object serves the linears that read one input: its `add_batch` hooks the first of
them, its `add_grad` each one's output.
"""
import logging
import time
from dataclasses import dataclass, field

import torch

from surgeon.model.placement import on_device

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


def _feed(stats: dict, gradients: bool = False, clock: dict | None = None) -> list:
    """Hooks that feed each distinct statistics object in `stats` (key -> object): the shared
    input from its first linear, and (with gradients) every linear's output gradient. `clock`
    accumulates the seconds spent accumulating inputs ("statistics_s")."""
    def add_batch(mod, inp, out, c):
        t = time.perf_counter()
        c.add_batch(inp[0].detach())
        if clock is not None:
            clock["statistics_s"] = clock.get("statistics_s", 0.0) + time.perf_counter() - t

    hooks = []
    for curv in {id(c): c for c in stats.values()}.values():
        first = next(iter(curv.linears.values()))
        hooks.append(first.register_forward_hook(lambda mod, inp, out, c=curv: add_batch(mod, inp, out, c)))
        if gradients:
            for name, lin in curv.linears.items():
                def grad_hook(mod, inp, out, c=curv, n=name):
                    if out.requires_grad:
                        out.register_hook(lambda g: c.add_grad(n, g.detach()))
                hooks.append(lin.register_forward_hook(grad_hook))
    return hooks


def _remove(hooks) -> None:
    for h in hooks:
        h.remove()


@torch.no_grad()
def sequential(adapter, windows, device: torch.device, statistics, decide, timings: dict | None = None) -> list[dict]:
    """Layer by layer: `statistics(i, layer)` -> {key: statistics object} to feed from the
    layer's inputs (`windows` None: no data, nothing fed), then `decide(i, layer, stats)` prunes
    it and returns its records, then its outputs are recomputed for the next layer. `timings`
    receives where the time went: forward_s (both passes over the windows, statistics included),
    statistics_s (accumulating them), decide_s."""
    clock = {"forward_s": 0.0, "statistics_s": 0.0, "decide_s": 0.0}
    layers = adapter.layers()
    records = []

    def forward(layer, inputs, kwargs):
        t = time.perf_counter()
        outs = forward_layer(layer, inputs, kwargs)
        clock["forward_s"] += time.perf_counter() - t
        return outs

    with on_device(_trunk(adapter), device):
        data = None if windows is None else capture(adapter, windows, device)
        for i, layer in enumerate(layers):
            t0 = time.time()
            with on_device(layer, device):
                stats = statistics(i, layer)
                if data is not None:
                    hooks = _feed(stats, clock=clock)
                    try:
                        forward(layer, data.inputs, data.layer_kwargs[i])
                    finally:
                        _remove(hooks)
                t = time.perf_counter()
                records += decide(i, layer, stats)
                clock["decide_s"] += time.perf_counter() - t
                del stats
                if data is not None:
                    data.inputs = forward(layer, data.inputs, data.layer_kwargs[i])
            log.info("layer %d/%d pruned in %.1fs", i + 1, len(layers), time.time() - t0)
    if timings is not None:
        timings.update(clock)
    return records


def whole_model(adapter, windows, device: torch.device, statistics, gradients: bool,
                labels: str = "empirical", seed: int = 0) -> dict:
    """Statistics of every layer at once: {key: statistics object}. With
    gradients, each window runs forward + backward on the summed next-token loss (`labels`:
    the true next tokens, or - "true" - tokens sampled from the model's own softmax); parameters
    get no gradients (only activations do), which saves the weight-gradient matmuls and their
    memory. Without gradients, layer by layer, nothing pruned. `statistics(i, layer)` gives
    layer i's objects, keyed as the result."""
    stats = {}

    def collect(i, layer):
        layer_stats = statistics(i, layer)
        stats.update(layer_stats)
        return layer_stats

    if windows is None:  # no data: the objects only (their factors need none)
        for i, layer in enumerate(adapter.layers()):
            collect(i, layer)
        return stats
    if not gradients:
        sequential(adapter, windows, device, collect, lambda i, layer, s: [])
        return stats
    for i, layer in enumerate(adapter.layers()):
        collect(i, layer)
    model = adapter.model
    hooks = _feed(stats, gradients=True)
    # make activations differentiable without asking for parameter gradients
    hooks.append(model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True)))
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(False)
    gen = torch.Generator(device=device).manual_seed(seed)
    try:
        with on_device(model, device):
            for w in windows:
                w = w.unsqueeze(0).to(device)
                with torch.enable_grad():
                    logits = model(w, use_cache=False).logits[:, :-1].float()
                    if labels == "true":  # labels from the model's own predictive distribution
                        with torch.no_grad():
                            targets = torch.multinomial(logits.softmax(-1).reshape(-1, logits.shape[-1]), 1,
                                                        generator=gen).view(1, -1)
                    else:
                        targets = w[:, 1:]
                    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             targets.reshape(-1), reduction="sum")
                    loss.backward()
    finally:
        _remove(hooks)
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return stats
