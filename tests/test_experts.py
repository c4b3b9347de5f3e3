"""Expert pruning (structure=experts): the routing statistics, which experts go, and that the model
without them is a plain checkpoint of its family with one smaller expert count."""
import copy

import pytest
import torch
from omegaconf import OmegaConf

from surgeon import compact
from surgeon.config import CONF_DIR
from surgeon.errors import SurgeonError
from surgeon.method.prune import Method
from surgeon.model.adapters import adapter_for
from surgeon.model.adapters.experts import Usage
from surgeon.model.load import _tiny
from surgeon.structure import Experts
from tests.conftest import MOE, curvature_cfg, method_cfg, prune, tiny_model


def _windows(n=3, seq=32, seed=0):
    return torch.randint(0, 256, (n, seq), generator=torch.Generator().manual_seed(seed))


def _drop(model, sparsity, score="routed_norm", curvature="identity", windows=None):
    structure = Experts(score)
    structure.target(sparsity)
    adapter = adapter_for(model)
    structure.check(adapter)
    method = Method(method_cfg(allocation="layer", update="none"), curvature_cfg(curvature), structure)
    return prune(adapter, method, sparsity, _windows() if windows is None else windows)


def _count(model) -> int:
    return getattr(model.config, "num_local_experts", None) or model.config.num_experts


def test_usage_counts_the_routers_choices_and_the_gated_output_norms():
    model = tiny_model("tiny_mixtral").eval()
    adapter = adapter_for(model)
    layer = adapter.layers()[0]
    usage = Usage(adapter.experts(layer))
    hooks = usage.hooks()
    routed = []  # what the router itself returned, and the FFN's input, per forward
    hooks.append(layer.mlp.register_forward_hook(lambda m, inp, out: routed.append(inp[0].reshape(-1, inp[0].shape[-1]))))
    with torch.no_grad():
        for w in _windows():
            model(w.unsqueeze(0), use_cache=False)
    for h in hooks:
        h.remove()
    x = torch.cat(routed)
    with torch.no_grad():
        _, weights, index = layer.mlp.gate(x)
        for e, ex in enumerate(adapter.experts(layer).experts):
            tokens, slot = torch.where(index == e)
            y = ex.down(torch.nn.functional.silu(ex.gate(x[tokens])) * ex.up(x[tokens]))
            assert usage.routed[e] == tokens.numel()
            expected = (weights[tokens, slot].double() * y.double().norm(dim=-1)).sum()
            assert usage.gated_norm[e].item() == pytest.approx(expected.item(), rel=1e-5)
    assert usage.tokens == 3 * 32 and int(usage.routed.sum()) == 3 * 32 * 2  # every token reaches its top-2


@pytest.mark.parametrize("name", MOE)
@pytest.mark.parametrize("score, curvature", [("routed_norm", "identity"), ("reap", "identity"),
                                              ("frequency", "identity"), ("curvature", "hessian")])
def test_the_lowest_scored_experts_go_and_the_model_reloads_with_fewer(tmp_path, name, score, curvature):
    from transformers import AutoModelForCausalLM

    model = tiny_model(name).eval()
    dense = copy.deepcopy(model)
    d = adapter_for(dense)
    records = _drop(model, 0.5, score, curvature)
    kept = {}
    for r in records:
        if "expert" in r:
            kept.setdefault(r["layer"], {})[r["expert"]] = r
    adapter = adapter_for(model)
    moe = [i for i, layer in enumerate(adapter.layers()) if adapter.experts(layer) is not None]
    assert sorted(kept) == moe and _count(model) == 2
    for i in moe:
        removed = next(iter(kept[i].values()))["experts_removed"]
        assert len(removed) == 2 and set(removed).isdisjoint(kept[i])
        assert adapter.experts(adapter.layers()[i]).ids == sorted(kept[i])
        assert adapter.layers()[i].mlp.gate.weight.shape[0] == 2
    # layer 0 sees the dense model's inputs: its scores are the dense model's, and the lowest two went
    if score != "curvature":
        usage = Usage(d.experts(d.layers()[0]))
        hooks = usage.hooks()
        with torch.no_grad():
            for w in _windows():
                dense(w.unsqueeze(0), use_cache=False)
        for h in hooks:
            h.remove()
        expected = Experts(score).scores(0, [], None, {(0, "experts"): usage}, 4)
        assert sorted(next(iter(kept[0].values()))["experts_removed"]) == sorted(sorted(range(4), key=expected.__getitem__)[:2])
        assert all(r["expert_score"] == pytest.approx(expected[e]) for e, r in kept[0].items())
    # the kept experts are the dense ones, untouched (no update)
    for e_new, e in enumerate(sorted(kept[0])):
        got, ref = adapter.experts(adapter.layers()[0]).experts[e_new], d.experts(d.layers()[0]).experts[e]
        assert torch.equal(got.down.weight, ref.down.weight) and torch.equal(got.gate.weight, ref.gate.weight)
    probe = _windows(1, 24, seed=5)
    with torch.no_grad():
        pruned = model(probe).logits
    compact.compact(model)
    compact.save(model, None, tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    assert _count(reloaded) == 2 and reloaded.model.layers[moe[0]].mlp.experts.gate_up_proj.shape[0] == 2
    with torch.no_grad():
        assert (model(probe).logits - pruned).abs().max() < 1e-5
        assert (reloaded(probe).logits - pruned).abs().max() < 1e-5


def _mixtral_with_a_dead_expert(top_k=1):
    """Tiny Mixtral whose expert 3 never wins the router (it trails expert 0 or expert 1)."""
    cfg = OmegaConf.load(CONF_DIR / "model" / "tiny_mixtral.yaml")
    cfg.config.vocab_size, cfg.config.num_experts_per_tok = 256, top_k
    model = _tiny(cfg, torch.float32).eval()
    for layer in model.model.layers:
        w = layer.mlp.gate.weight.data
        w[1], w[3] = -w[0], 0.5 * w[0]
    return model


@pytest.mark.parametrize("score, curvature", [("routed_norm", "identity"), ("curvature", "hessian")])
def test_an_expert_no_token_reaches_goes_first_and_its_removal_changes_nothing(score, curvature):
    """Mixtral renormalizes its top-k weights: an expert that is never picked adds nothing to
    any token, so the model without it computes exactly what the model with it did."""
    model = _mixtral_with_a_dead_expert()
    probe = _windows(2, 24, seed=7)
    with torch.no_grad():
        before = model(probe).logits
    records = _drop(model, 0.25, score, curvature)
    removed = {r["layer"]: r["experts_removed"] for r in records if "expert" in r}
    assert removed == {0: [3], 1: [3]}
    assert all(r["expert_score"] > 0 for r in records if "expert" in r)
    with torch.no_grad():
        assert (model(probe).logits - before).abs().max() < 1e-5


def test_shots_count_removed_experts_from_the_dense_count():
    model = tiny_model("tiny_qwen2_moe").eval()
    first = _drop(model, 0.25)
    second = _drop(model, 0.5)
    gone = {r["layer"]: r["experts_removed"] for r in first if "expert" in r}
    then = {r["layer"]: (r["experts_removed"], r["expert"]) for r in second if "expert" in r}
    assert _count(model) == 2 and all(len(g) == 1 for g in gone.values())
    for i, (removed, _) in then.items():
        assert len(removed) == 1 and removed[0] not in gone[i]  # dense indices, one more per layer
    assert {r["expert"] for r in second if "expert" in r and r["layer"] == 0} | set(gone[0]) | set(then[0][0]) == {0, 1, 2, 3}


def test_structure_experts_refuses_dense_models_and_too_few_experts_in_one_line():
    s = Experts()
    with pytest.raises(SurgeonError, match="model_type 'llama' has none"):
        s.check(adapter_for(tiny_model("tiny_llama")))
    s.target(0.75)  # 1 of 4 experts left; the router picks 2
    with pytest.raises(SurgeonError) as err:
        s.check(adapter_for(tiny_model("tiny_mixtral")))
    assert "leaving fewer than the 2 the router picks per token: at most 0.500" in str(err.value)
    with pytest.raises(SurgeonError, match="needs method.allocation=layer and method.update=none"):
        Method(method_cfg(allocation="global", update="none"), curvature_cfg("identity"), s)


def test_drop_experts_run_compacts_and_saves_a_plain_checkpoint(compose_cfg, tmp_path):
    from transformers import AutoModelForCausalLM

    from surgeon.run import execute
    from tests.test_run import QUICK

    res = execute(compose_cfg(*QUICK, "model=tiny_qwen3_moe", "method=drop_experts", "sparsity=0.5", "save=true",
                              "eval.corpora=[wiki_heldout]", "latency.new_tokens=2", "latency.repeats=1"), tmp_path)
    assert res["structure"] == "experts (routed_norm)"
    dense = adapter_for(tiny_model("tiny_qwen3_moe"))
    routed = sum(lin.weight.numel() for layer in dense.layers() if dense.experts(layer) for mlp in dense.experts(layer).mlps()
                 for lin in (*mlp.inputs, mlp.output))
    assert res["achieved_sparsity"] == pytest.approx(0.5 * routed / dense.prunable_parameters())  # attention stays
    assert res["compaction"]["max_logit_diff"] < 1e-4
    assert res["compaction"]["reload"] == {"loader": "from_pretrained", "max_logit_diff": pytest.approx(0.0, abs=1e-4)}
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    assert reloaded.config.num_experts == 2
