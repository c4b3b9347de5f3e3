"""What each architecture adapter must get right beyond the shared test matrix (tests/conftest.py
TINY runs every family through it): fused projections, and failing fast on unknown families."""
import pytest
import torch

from surgeon.errors import SurgeonError
from surgeon.model.adapters import ADAPTERS, adapter_for, check_model_type
from tests.conftest import tiny_model


def test_phi3_shows_its_fused_projections_as_parts_and_saves_them_fused(tmp_path):
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
    plain = _saved_and_reloaded(model, tmp_path, x, "model.layers.0.self_attn.qkv_proj.weight", ".parts.")
    fused = plain.model.layers[0].self_attn.qkv_proj
    assert type(fused) is torch.nn.Linear
    assert torch.equal(fused.weight, torch.cat([att.q.weight, att.k.weight, att.v.weight]))


def _saved_and_reloaded(model, folder, x, kept_key: str, shown_part: str):
    """The model's state dict holds `kept_key` (the original layout) and no key with `shown_part`;
    saved and loaded with plain `from_pretrained`, it gives the same logits on `x`. Returns it."""
    from transformers import AutoModelForCausalLM

    keys = model.state_dict().keys()
    assert kept_key in keys and not any(shown_part in k for k in keys)
    model.save_pretrained(folder)
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(plain(x).logits, model(x).logits, atol=1e-5)
    return plain


def test_unknown_model_type_fails_in_one_line_listing_the_families():
    with pytest.raises(SurgeonError) as err:
        check_model_type("mamba")
    message = str(err.value)
    assert "\n" not in message and "no architecture adapter for model_type 'mamba'" in message
    for family in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "opt"):
        assert family in ADAPTERS and family in message


@pytest.mark.parametrize("name", ["tiny_mixtral", "tiny_qwen2_moe", "tiny_qwen3_moe"])
def test_packed_experts_are_shown_one_linear_each_and_saved_packed(tmp_path, name):
    model = tiny_model(name).eval()
    x = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        before = model(x).logits
    adapter = adapter_for(model)
    names = list(adapter.prunable_linears(adapter.layers()[0]))
    assert [n for n in names if n.startswith("mlp.experts.experts.3.")] == [
        "mlp.experts.experts.3.gate", "mlp.experts.experts.3.up", "mlp.experts.experts.3.down"]
    with torch.no_grad():
        assert torch.allclose(model(x).logits, before, atol=1e-6)
    ex = adapter.layers()[0].mlp.experts.experts[2]
    ex.up.weight.data[:5] = 0.0
    plain = _saved_and_reloaded(model, tmp_path, x, "model.layers.0.mlp.experts.gate_up_proj", ".experts.experts.")
    packed = plain.model.layers[0].mlp.experts
    assert torch.equal(packed.gate_up_proj[2], torch.cat([ex.gate.weight, ex.up.weight]))


def _routed_tokens(model, windows) -> dict:
    """{(layer, expert): tokens routed there}, from the routers' own top-k choices."""
    counts, hooks = {}, []
    for i, layer in enumerate(model.model.layers):
        if hasattr(layer.mlp, "experts"):
            def hook(mod, inp, out, i=i):
                for e, n in zip(*out[2].flatten().unique(return_counts=True)):
                    counts[(i, int(e))] = counts.get((i, int(e)), 0) + int(n)
            hooks.append(layer.mlp.gate.register_forward_hook(hook))
    with torch.no_grad():
        for w in windows:
            model(w.unsqueeze(0), use_cache=False)
    for h in hooks:
        h.remove()
    return counts


def _prune(model, method, windows, **cfg):
    from surgeon.method.prune import Method
    from surgeon.structure import Unstructured
    from tests.conftest import curvature_cfg, method_cfg, prune

    curvature = {"sparsegpt": "hessian", "wanda": "diagonal"}[method]
    m = Method(method_cfg(allocation="row" if method == "wanda" else "layer",
                          update="obs" if method == "sparsegpt" else "none", **cfg),
               curvature_cfg(curvature, **({"damp": 0.0} if method == "wanda" else {})), Unstructured())
    return prune(adapter_for(model), m, 0.5, windows)


def test_each_expert_is_pruned_from_the_tokens_routed_to_it():
    model = tiny_model("tiny_mixtral").eval()
    windows = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    adapter_for(model)
    routed = _routed_tokens(model, windows[:, :])  # layer 0 sees the dense model's routing either way
    records = _prune(model, "sparsegpt", windows)
    seen = {(r["layer"], int(r["name"].split(".")[3])): r["tokens"] for r in records
            if r["name"].startswith("mlp.experts.experts.") and r["name"].endswith(".gate")}
    assert all(seen[(0, e)] == routed.get((0, e), 0) for e in range(4))
    assert sum(seen[(0, e)] for e in range(4)) == 3 * 32 * 2  # every token reaches its top-2
    attention = [r["tokens"] for r in records if r["name"] == "self_attn.q_proj"]
    assert attention == [96, 96]


@pytest.mark.parametrize("unrouted", ["magnitude", "dense"])
def test_an_expert_no_token_reaches_is_pruned_by_magnitude_or_left_dense_never_nan(unrouted):
    from omegaconf import OmegaConf

    from surgeon.config import CONF_DIR
    from surgeon.model.load import _tiny

    cfg = OmegaConf.load(CONF_DIR / "model" / "tiny_mixtral.yaml")
    cfg.config.vocab_size, cfg.config.num_experts_per_tok = 256, 1
    model = _tiny(cfg, torch.float32).eval()
    for layer in model.model.layers:  # expert 3 never wins: it trails expert 0 or expert 1
        w = layer.mlp.gate.weight.data
        w[1], w[3] = -w[0], 0.5 * w[0]
    windows = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    adapter = adapter_for(model)
    expert = adapter.layers()[0].mlp.experts.experts[3]
    dense = {n: getattr(expert, n).weight.detach().clone() for n in ("gate", "up", "down")}
    records = _prune(model, "sparsegpt", windows, unrouted=unrouted)
    mine = {r["name"].split(".")[-1]: r for r in records if r["layer"] == 0 and ".experts.3." in r["name"]}
    assert all(r["tokens"] == 0 for r in mine.values())
    for n, W in dense.items():
        got = getattr(expert, n).weight
        assert torch.isfinite(got).all()
        if unrouted == "dense":
            assert torch.equal(got, W)
        else:  # the identity curvature: the smallest half of |w| goes, the rest is untouched
            keep = got != 0
            assert keep.float().mean() == pytest.approx(0.5) and torch.equal(got[keep], W[keep])
            assert W[~keep].abs().max() <= W[keep].abs().min()
    with torch.no_grad():
        assert torch.isfinite(model(windows).logits).all()


def test_heads_and_neurons_refuse_mixtures_of_experts():
    from surgeon.structure import HeadsNeurons

    with pytest.raises(SurgeonError, match="for mixture-of-experts layers use structure=unstructured, nm or layers"):
        HeadsNeurons().check(adapter_for(tiny_model("tiny_mixtral")))
