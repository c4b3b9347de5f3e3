"""Depth pruning (structure=layers): Block Influence, the curvature cost of a layer, and
compaction that drops layers and reloads with plain from_pretrained."""
import pytest
import torch
from omegaconf import OmegaConf

from surgeon import compact
from surgeon.config import CONF_DIR
from surgeon.curvature.kron import Kron
from surgeon.method.prune import Method
from surgeon.model.adapters import adapter_for
from surgeon.model.load import _tiny
from surgeon.structure.layers import BlockInfluence, Layers, quadratic_cost
from tests.conftest import TINY, curvature_cfg, method_cfg, prune


def deep_tiny(name: str, layers: int = 6):
    cfg = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    cfg.config.vocab_size, cfg.config.num_hidden_layers = 256, layers
    if "layer_types" in cfg.config:
        cfg.config.layer_types = ["sliding_attention", "full_attention"] * (layers // 2)
    return _tiny(cfg, torch.float32)


def _windows(n=3, seq=32, seed=1):
    return torch.randint(0, 256, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_block_influence_of_an_identity_layer_is_zero_and_of_others_one_minus_cosine():
    model = deep_tiny("tiny_llama", 4).eval()
    adapter = adapter_for(model)
    silent = adapter.layers()[1]
    for lin in adapter.hidden_writers(silent):
        lin.weight.data.zero_()
    observers = [BlockInfluence(layer) for layer in adapter.layers()]
    hooks = [h for o in observers for h in o.hooks()]
    states = []
    with torch.no_grad():
        for w in _windows():
            states.append(model(w.unsqueeze(0), output_hidden_states=True, use_cache=False).hidden_states)
    for h in hooks:
        h.remove()
    assert observers[1].influence() == pytest.approx(0.0, abs=1e-12)
    for i in (0, 2):  # hidden_states[i] enters layer i, hidden_states[i + 1] leaves it
        cos = torch.cat([torch.nn.functional.cosine_similarity(s[i][0].double(), s[i + 1][0].double(), dim=-1)
                         for s in states])
        assert observers[i].influence() == pytest.approx(1 - cos.mean().item(), rel=1e-6)
        assert observers[i].influence() > 0.01


def test_layer_curvature_cost_is_the_kronecker_quadratic_form():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 7, generator=g)
    Gm, Am = torch.randn(5, 5, generator=g), torch.randn(7, 7, generator=g)
    G, A = Gm @ Gm.T + torch.eye(5), Am @ Am.T + torch.eye(7)
    w = W.flatten()  # row-major vec: F = G (x) A
    expected = 0.5 * w @ torch.kron(G, A) @ w
    assert quadratic_cost(W, Kron.of(G, A)) == pytest.approx(expected.item(), rel=1e-5)
    d = torch.rand(7, generator=g)
    assert quadratic_cost(W, Kron.of(None, d)) == pytest.approx(0.5 * (W ** 2 * d).sum().item(), rel=1e-5)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("score, curvature", [("block_influence", "identity"), ("curvature", "hessian")])
def test_depth_pruning_removes_the_cheapest_layers_and_compaction_drops_them(tmp_path, name, score, curvature):
    from transformers import AutoModelForCausalLM

    model = deep_tiny(name, 6).eval()
    adapter = adapter_for(model)
    method = Method(method_cfg(allocation="global", update="none"), curvature_cfg(curvature), Layers(score))
    records = prune(adapter, method, 1 / 3, _windows())
    removed = sorted({r["layer"] for r in records if r.get("layer_removed")})
    scores = {r["layer"]: r["layer_score"] for r in records if "layer_score" in r}
    assert len(removed) == 2 and max(scores[i] for i in removed) <= min(s for i, s in scores.items() if i not in removed)
    assert all(r["sparsity"] == (1.0 if r["layer"] in removed else 0.0) for r in records)

    probe = _windows(1, 24, seed=5)
    with torch.no_grad():
        masked = model(probe).logits
    shapes = compact.compact(model)
    assert len(shapes) == 4 == model.config.num_hidden_layers == len(adapter.layers())
    assert [a.layer_idx for a in (layer.self_attn for layer in adapter.layers())] == [0, 1, 2, 3]
    with torch.no_grad():
        assert (model(probe).logits - masked).abs().max() < 1e-4
        generated = model.generate(probe, max_new_tokens=3, do_sample=False, pad_token_id=0)  # KV cache keyed by new indices
    assert generated.shape[1] == 27
    compact.save(model, None, tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (reloaded(probe).logits - masked).abs().max() < 1e-4


def test_post_norm_opt_keeps_silenced_layers(tmp_path):
    model = deep_tiny("tiny_opt", 4).eval()
    model.config.do_layer_norm_before = False  # a silenced post-norm layer still renormalizes
    adapter = adapter_for(model)
    for lin in adapter.prunable_linears(adapter.layers()[1]).values():
        lin.weight.data.zero_()
        lin.bias.data.zero_()
    compact.compact(model)
    assert len(adapter.layers()) == 4


def test_shortgpt_then_slimgpt_on_the_saved_model(compose_cfg, tmp_path):
    """Depth pruning composes with the rest: its saved model is an ordinary checkpoint."""
    from surgeon.run import execute
    from tests.test_run import QUICK

    first = execute(compose_cfg(*QUICK, "model.config.num_hidden_layers=4", "method=shortgpt", "sparsity=0.25",
                                "save=true", "eval.corpora=[wiki_heldout]", "latency.new_tokens=2",
                                "latency.repeats=1"), tmp_path / "depth")
    assert first["compaction"]["layer_shapes"] and len(first["compaction"]["layer_shapes"]) == 3
    assert first["achieved_sparsity"] == pytest.approx(0.25)
    second = execute(compose_cfg(*QUICK, "model=local", f"model.path={tmp_path / 'depth' / 'model'}",
                                 "method=slimgpt", "sparsity=0.3", "eval.corpora=[wiki_heldout]",
                                 "latency.new_tokens=2", "latency.repeats=1"), tmp_path / "slim")
    assert len(second["compaction"]["layer_shapes"]) == 3
    assert second["compaction"]["max_logit_diff"] < 1e-3
