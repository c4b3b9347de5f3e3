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
  backward passes of the model over each window - layer by layer (`gradient_pass`: one layer on
  the accelerator, each layer run twice), or with the whole model on the device where it fits
  (`autograd_pass`: each layer once, the floor); `floor_pass` times a plain forward + backward.
A statistics object serves the linears that read one input: its `add_batch` hooks the first of
them, its `add_grad` each one's output. An object with `hooks()` (a structure's observer of a
whole decoder layer) attaches itself instead.
"""
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from surgeon.model.placement import HOME, on_device

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


def trunk(adapter):
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
        if hasattr(curv, "hooks"):  # a structure's own observer (block influence) attaches itself
            hooks += curv.hooks()
            continue
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

    with on_device(trunk(adapter), device):
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
                labels: str = "empirical", seed: int = 0, chunk: int = 16, mode: str = "layerwise") -> dict:
    """Statistics of every layer before any decision: {key: statistics object}, where
    `statistics(i, layer)` gives layer i's objects, keyed as the result. Without gradients, layer by
    layer as `sequential`, nothing pruned; with gradients, `gradient_pass` (mode "layerwise") or
    `autograd_pass` (mode "whole")."""
    stats = {}

    def collect(i, layer):
        layer_stats = statistics(i, layer)
        stats.update(layer_stats)
        return layer_stats

    if windows is None:  # no data: the objects only (their factors need none)
        for i, layer in enumerate(adapter.layers()):
            collect(i, layer)
    elif not gradients:
        sequential(adapter, windows, device, collect, lambda i, layer, s: [])
    else:
        for i, layer in enumerate(adapter.layers()):
            collect(i, layer)
        if mode == "whole":
            autograd_pass(adapter, windows, device, stats, labels, seed)
        else:
            gradient_pass(adapter, windows, device, stats, labels, seed, chunk)
    return stats


def _loss(logits: torch.Tensor, window: torch.Tensor, labels: str, gen) -> torch.Tensor:
    """The summed next-token loss of one window; `labels` "true": targets sampled from the model."""
    flat = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    if labels == "true":
        with torch.no_grad():
            targets = torch.multinomial(flat.softmax(-1), 1, generator=gen).flatten()
    else:
        targets = window[1:].to(flat.device)
    return torch.nn.functional.cross_entropy(flat, targets, reduction="sum")


@contextmanager
def _grads(model, on: bool):
    """Every parameter's requires_grad set to `on` for the block, then restored. Off: backward
    computes activation gradients only."""
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(on)
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def autograd_pass(adapter, windows, device: torch.device, stats: dict, labels: str = "empirical",
                  seed: int = 0) -> None:
    """As `gradient_pass`, with the whole model on the device: per window one forward and one
    backward of the model's own code (the embedding output made to require gradients, no
    parameter gradients). Where the model fits - on a CPU it is home anyway - this is the cost
    floor of a gradient curvature: no layer is run twice."""
    model = adapter.model
    gen = torch.Generator(device=device).manual_seed(seed)
    emb = adapter.embeddings()
    with _grads(model, False), on_device(model, device):
        hooks = _feed(stats, gradients=True)
        hooks.append(emb.register_forward_hook(lambda mod, inp, out: out.detach().requires_grad_(True)))
        try:
            for w in windows:
                w = w.unsqueeze(0).to(device)
                with torch.enable_grad():
                    _loss(model(w, use_cache=False).logits, w[0], labels, gen).backward()
        finally:
            _remove(hooks)


def floor_pass(adapter, windows, device: torch.device) -> float:
    """Seconds of a plain forward + backward (parameter gradients included, as training computes
    them) over `windows`, one at a time, the whole model on the device: what a gradient
    curvature's pass is compared with. Gradients are dropped after each window."""
    model = adapter.model
    t = time.perf_counter()
    with _grads(model, True), on_device(model, device):
        for w in windows:
            w = w.unsqueeze(0).to(device)
            with torch.enable_grad():
                _loss(model(w, use_cache=False).logits, w[0], "empirical", None).backward()
            model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.perf_counter() - t


def gradient_pass(adapter, windows, device: torch.device, stats: dict, labels: str = "empirical",
                  seed: int = 0, chunk: int = 16) -> None:
    """Feeds `stats` ({(layer, name): object}) the inputs and output gradients of every linear
    under the summed next-token loss, with one decoder layer on the device at a time. For each
    chunk of `chunk` windows: a forward pass layer by layer keeps every layer's input (in host
    memory: layers x chunk x seq x hidden); the loss is taken with only the model's final norm and
    head on the device (`labels`: the true next tokens, or - "true" - tokens sampled from the
    model's own softmax), giving its gradient with respect to the last layer's output; then layer
    by layer backwards, each layer is brought back, its forward recomputed from the kept input with
    gradients on (its statistics fed here), backpropagated with the gradient from above, and the
    gradient with respect to its input handed down. Parameters get no gradients (only
    activations do): no weight-gradient matmuls, no memory for them."""
    layers, model = adapter.layers(), adapter.model
    head = [*trunk(adapter), model.get_output_embeddings()]
    gen = torch.Generator(device=device).manual_seed(seed)
    with _grads(model, False):
        for start in range(0, len(windows), chunk):
            ws = windows[start:start + chunk]
            with on_device(trunk(adapter), device):
                data = capture(adapter, ws, device)
            kept = [[x.to(HOME) for x in data.inputs]]
            for i, layer in enumerate(layers):
                with on_device(layer, device):
                    outs = forward_layer(layer, [x.to(device) for x in kept[-1]], data.layer_kwargs[i])
                kept.append([y.to(HOME) for y in outs])
            grads = []
            with on_device(head, device):
                for w, x in zip(ws, kept.pop()):
                    x = x.to(device).requires_grad_(True)
                    with torch.enable_grad():
                        loss = _loss(head_logits(adapter, w.unsqueeze(0).to(device), x), w, labels, gen)
                        grads.append(torch.autograd.grad(loss, x)[0])
            for i in reversed(range(len(layers))):
                with on_device(layers[i], device):
                    hooks = _feed({k: c for k, c in stats.items() if k[0] == i}, gradients=True)
                    try:
                        grads = [_backward(layers[i], x.to(device), g, data.layer_kwargs[i])
                                 for x, g in zip(kept[i], grads)]
                    finally:
                        _remove(hooks)


def _backward(layer, x: torch.Tensor, grad_out: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The layer's forward recomputed from its input, and the gradient with respect to that input."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = layer(x, **kwargs)
        y = y[0] if isinstance(y, tuple) else y
        return torch.autograd.grad(y, x, grad_out)[0]


def head_logits(adapter, window: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits for `hidden`, its last decoder layer's output on `window`: the model's
    own code after the layers (final norm, output projection, head, any logit soft-capping), with
    its layers stubbed out so that they hand `hidden` on."""
    layers = adapter.layers()
    for i, layer in enumerate(layers):
        layer.forward = (lambda hidden_states, *a, **k: hidden) if i == 0 else (lambda hidden_states, *a, **k: hidden_states)
    try:
        return adapter.model(window, use_cache=False).logits
    finally:
        for layer in layers:
            del layer.forward
