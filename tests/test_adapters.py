"""What each architecture adapter must get right beyond the shared test matrix (tests/conftest.py
TINY runs every family through it): fused projections, and failing fast on unknown families."""
import pytest
import torch

from surgeon.errors import SurgeonError
from surgeon.model.adapters import ADAPTERS, adapter_for, check_model_type
from tests.conftest import tiny_model


def test_phi3_shows_its_fused_projections_as_parts_and_saves_them_fused(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("tiny_phi3").eval()
    x = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        before = model(x).logits
    adapter = adapter_for(model)
    layer = adapter.layers()[0]
    assert list(adapter.prunable_linears(layer)) == [
        "self_attn.qkv_proj.parts.q", "self_attn.qkv_proj.parts.k", "self_attn.qkv_proj.parts.v", "self_attn.o_proj",
        "mlp.gate_up_proj.parts.gate", "mlp.gate_up_proj.parts.up", "mlp.down_proj"]
    assert adapter.input_groups(layer)[0] == ["self_attn.qkv_proj.parts.q", "self_attn.qkv_proj.parts.k",
                                              "self_attn.qkv_proj.parts.v"]
    att = adapter.attention(layer)
    assert (att.num_heads, att.num_kv_heads, att.head_dim) == (4, 2, 16)
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)  # the parts compute what the fused linear did
    adapter_for(model)  # a second adapter finds the parts in place
    att.k.weight.data[:3] = 0.0
    keys = model.state_dict().keys()
    assert "model.layers.0.self_attn.qkv_proj.weight" in keys and not any(".parts." in k for k in keys)
    model.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    fused = plain.model.layers[0].self_attn.qkv_proj
    assert type(fused) is torch.nn.Linear
    assert torch.equal(fused.weight, torch.cat([att.q.weight, att.k.weight, att.v.weight]))
    with torch.no_grad():
        assert torch.allclose(plain(x).logits, model(x).logits, atol=1e-5)


def test_unknown_model_type_fails_in_one_line_listing_the_families():
    with pytest.raises(SurgeonError) as err:
        check_model_type("mamba")
    message = str(err.value)
    assert "\n" not in message and "no architecture adapter for model_type 'mamba'" in message
    for family in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "opt"):
        assert family in ADAPTERS and family in message
