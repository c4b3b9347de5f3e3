"""The layer-by-layer engine sees exactly what the full model computes, on every adapter."""
import pytest
import torch
from omegaconf import OmegaConf

from surgeon import engine
from surgeon.method import Method
from surgeon.model import adapter_for
from surgeon.structure import NM, Unstructured
from tests.conftest import TINY, tiny_model

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
    "magnitude": ({"allocation": "layer", "update": "none"}, {"name": "identity", "damp": 0.01}),
    "wanda": ({"allocation": "row", "update": "none"}, {"name": "diagonal", "source": "activations", "damp": 0.01}),
    "sparsegpt": ({"allocation": "layer", "update": "obs", "blocksize": 32}, {"name": "hessian", "damp": 0.01}),
}


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("structure", [Unstructured(), NM(2, 4)], ids=["unstructured", "2:4"])
def test_every_adapter_prunes_to_target(name, method, structure):
    model = tiny_model(name)
    adapter = adapter_for(model)
    m_cfg, c_cfg = METHODS[method]
    m = Method(OmegaConf.create(m_cfg), OmegaConf.create(c_cfg), structure)
    windows = torch.randint(0, 256, (4, 32))
    with torch.no_grad():
        before = model(windows).logits
    records = engine.prune_layerwise(adapter, windows, m, 0.5, CPU)
    # measured on the weights: every linear of every layer is at the target
    for layer in adapter.layers():
        for lin in adapter.prunable_linears(layer).values():
            assert (lin.weight == 0).float().mean().item() == pytest.approx(0.5, abs=1e-6)
            if isinstance(structure, NM):
                assert ((lin.weight == 0).reshape(lin.out_features, -1, 4).sum(-1) == 2).all()
    assert len(records) == len(adapter.layers()) * len(adapter.prunable_linears(adapter.layers()[0]))
    assert 1 - adapter.nonzero_prunable_parameters() / adapter.prunable_parameters() == pytest.approx(0.5)
    with torch.no_grad():
        after = model(windows).logits
    assert torch.isfinite(after).all() and not torch.allclose(before, after)
