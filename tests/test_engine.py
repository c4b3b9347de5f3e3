"""The layer-by-layer engine sees exactly what the full model computes, on every adapter, and
shares one statistics object between the linears that read one input."""
import pytest
import torch

from surgeon import engine
from surgeon.method import Method
from surgeon.model import adapter_for
from surgeon.model.placement import on_device
from surgeon.structure import NM, Unstructured
from tests.conftest import TINY, curvature_cfg, method_cfg, prune, tiny_model

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", TINY)
def test_layerwise_inputs_match_full_forward(name):
    model = tiny_model(name)
    adapter = adapter_for(model)
    windows = torch.randint(0, 256, (3, 40))  # longer than Gemma's sliding window (16)
    cap = engine.capture(adapter, windows, CPU)
    with torch.no_grad():
        hidden = model(windows, output_hidden_states=True).hidden_states
    inputs = cap.inputs
    for i, layer in enumerate(adapter.layers()):
        for j, x in enumerate(inputs):
            torch.testing.assert_close(x[0], hidden[i][j], rtol=1e-5, atol=1e-5)
        inputs = engine.forward_layer(layer, inputs, cap.layer_kwargs[i])


METHODS = {
    "magnitude": (method_cfg(allocation="layer", update="none"), curvature_cfg("identity")),
    "wanda": (method_cfg(allocation="row", update="none"), curvature_cfg("diagonal", damp=0.0)),
    "sparsegpt": (method_cfg(allocation="layer", update="obs", blocksize=32), curvature_cfg("hessian")),
}


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("structure", [Unstructured(), NM(2, 4)], ids=["unstructured", "2:4"])
def test_every_adapter_prunes_to_target(name, method, structure):
    model = tiny_model(name)
    adapter = adapter_for(model)
    m = Method(*METHODS[method], structure)
    windows = torch.randint(0, 256, (4, 32))
    with torch.no_grad():
        before = model(windows).logits
    records = prune(adapter, m, 0.5, windows)
    # measured on the weights: every linear of every layer is at the target
    for layer in adapter.layers():
        for lin in adapter.prunable_linears(layer).values():
            assert (lin.weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-6)
            if isinstance(structure, NM):
                assert ((lin.weight == 0).reshape(lin.out_features, -1, 4).sum(-1) == 2).all()
    assert len(records) == sum(len(adapter.prunable_linears(layer)) for layer in adapter.layers())
    assert 1 - adapter.nonzero_prunable_parameters() / adapter.prunable_parameters() == pytest.approx(0.5)
    with torch.no_grad():
        after = model(windows).logits
    assert torch.isfinite(after).all() and not torch.allclose(before, after)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_opt"])
def test_linears_reading_one_input_share_one_statistics_object(name):
    """q/k/v (and gate/up) are fed once: one Hessian per input, equal to each linear's own."""
    adapter = adapter_for(tiny_model(name))
    m = Method(*METHODS["sparsegpt"], Unstructured())
    layer = adapter.layers()[0]
    stats = m.statistics(adapter, 0, layer)
    groups = adapter.input_groups(layer)
    assert len({id(c) for c in stats.values()}) == len(groups) == 4
    for group in groups:
        assert len({id(stats[(0, n)]) for n in group}) == 1
    windows = torch.randint(0, 256, (2, 16))
    seen = {}
    hooks = [lin.register_forward_hook(lambda mod, inp, out, n=n: seen.setdefault(n, []).append(inp[0]))
             for n, lin in adapter.prunable_linears(layer).items()]
    engine.sequential(adapter, windows, CPU, lambda i, lay: m.statistics(adapter, i, lay) if i == 0 else {},
                      lambda i, lay, s: stats.update(s) or [])
    for h in hooks:
        h.remove()
    for group in groups:
        for n in group:  # every member's own inputs give its group's H
            X = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen[n][:2]])
            torch.testing.assert_close(stats[(0, n)].H, 2 * X.T @ X / len(X), rtol=1e-5, atol=1e-6)


def test_on_device_sends_modules_home_even_when_the_work_fails():
    moves = []

    class Tracked(torch.nn.Linear):
        def to(self, device):
            moves.append(str(device))
            return self

    with pytest.raises(RuntimeError, match="boom"):
        with on_device([Tracked(2, 2), Tracked(2, 2)], torch.device("cuda")):
            assert moves == ["cuda", "cuda"]
            raise RuntimeError("boom")
    assert moves == ["cuda", "cuda", "cpu", "cpu"]


def _bytes(modules) -> int:
    return sum(p.numel() * p.element_size() for p in {id(p): p for m in modules for p in m.parameters()}.values())


@pytest.mark.parametrize("name", TINY)
def test_layerwise_perplexity_equals_the_whole_models(name):
    from surgeon.eval.perplexity import perplexity, perplexity_layerwise
    from surgeon.model.placement import RESIDENT

    model = tiny_model(name)
    adapter = adapter_for(model)
    windows, prefix = torch.randint(0, 256, (3, 24)), torch.randint(0, 256, (5,))
    for pre in (None, prefix):
        whole = perplexity(model, windows, CPU, batch_size=1, prefix=pre)
        RESIDENT.reset()
        assert perplexity_layerwise(adapter, windows, CPU, prefix=pre) == pytest.approx(whole, rel=1e-6)
        bound = _bytes([*engine.trunk(adapter), model.get_output_embeddings()]) + max(map(_bytes, [[lay] for lay in adapter.layers()]))
        assert 0 < RESIDENT.peak <= bound < _bytes([model])


@pytest.mark.parametrize("method", ["sparsegpt", "kfac"])
def test_passes_hold_one_layer_and_the_trunk_on_the_device(method):
    """The layer-by-layer pass and the whole-model gradient pass never hold the model at once."""
    from surgeon.model.placement import RESIDENT

    model = tiny_model("tiny_llama")
    adapter = adapter_for(model)
    if method == "kfac":
        m = Method(method_cfg(allocation="global", update="correlated"),
                   curvature_cfg("kfac", chunk=2, gradient_pass="layerwise"), Unstructured())
    else:
        m = Method(*METHODS["sparsegpt"], Unstructured())
    RESIDENT.reset()
    prune(adapter, m, 0.3, torch.randint(0, 256, (3, 16)))
    one_layer = _bytes([*engine.trunk(adapter), model.get_output_embeddings()]) + _bytes([adapter.layers()[0]])
    assert 0 < RESIDENT.peak <= one_layer < _bytes([model])


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "kfac"])
def test_bfloat16_weights_stay_bfloat16_and_prune_as_float32_does(method):
    """model.dtype=bfloat16: the weights stay in bf16 while statistics, inverses and updates run
    in float32 - the masks are those of the fp32 model run in the same way (up to bf16 rounding of
    the layer inputs), and pruned perplexity follows fp32's."""
    from surgeon.eval.perplexity import perplexity

    windows, ev = torch.randint(0, 256, (4, 32)), torch.randint(0, 256, (4, 32))
    if method == "kfac":
        make = lambda: Method(method_cfg(allocation="global", update="correlated"), curvature_cfg("kfac"),  # noqa: E731
                              Unstructured())
    else:
        make = lambda: Method(*METHODS[method], Unstructured())  # noqa: E731
    models = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_model("tiny_llama").to(dtype)
        prune(adapter_for(model), make(), 0.5, windows)
        models[dtype] = model
    half, full = models[torch.bfloat16], models[torch.float32]
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    masks = [(a.weight == 0) == (b.weight == 0) for a, b in zip(half.modules(), full.modules())
             if isinstance(a, torch.nn.Linear) and a is not half.get_output_embeddings()]
    agree = torch.cat([m.flatten() for m in masks]).float().mean().item()
    assert agree > 0.97, agree
    assert perplexity(half, ev, CPU) == pytest.approx(perplexity(full, ev, CPU), rel=0.02)
