"""Compresso: hard-concrete gates, their expected size, folding and compaction, the training run."""
import json

import pytest
import torch
from conftest import tiny_model

from surgeon import compact
from surgeon.plan import build as check
from surgeon.data import instructions
from surgeon.errors import SurgeonError
from surgeon.eval.perplexity import perplexity
from surgeon.method import compresso
from surgeon.method.hard_concrete import HardConcrete
from surgeon.model.adapters import adapter_for
from surgeon.run import execute

ALPACA = [{"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} plus {b} is {a + b}."}
          for a in range(12) for b in range(12)]


def test_hard_concrete_open_probability_and_deterministic_count():
    torch.manual_seed(0)
    g = HardConcrete((3, 50))
    g.log_alpha.data = torch.linspace(-4, 4, 150).view(3, 50)
    freq = torch.stack([(g.sample() > 0).float() for _ in range(4000)]).mean(0)
    torch.testing.assert_close(freq, g.prob_open().detach(), atol=0.04, rtol=0)
    z = g.deterministic()
    expected = g.prob_open().detach().sum(-1).round()
    assert torch.equal((z > 0).sum(-1).float(), expected)
    assert (z[z > 0] > 0).all() and (z <= 1).all()
    assert ((g.deterministic(multiple=4) > 0).sum(-1) % 4 == 0).all()
    # a kept gate whose noise-free value is 0 still counts as open when the count must be exact
    g.log_alpha.data = torch.full((1, 20), -3.0)
    g.log_alpha.data[0, :10] = 5.0
    assert g.prob_open().sum().item() == pytest.approx(11.96, abs=0.01)  # 12 open, a multiple of 2
    assert int((g.deterministic(2) > 0).sum()) == 10  # noise-free values of the -3 gates are 0 ...
    assert int((g.deterministic(2, binary=True) > 0).sum()) == 12  # ... binary keeps the count
    assert set(g.deterministic(2, binary=True).unique().tolist()) <= {0.0, 1.0}


def test_expected_size_counts_the_prunable_parameters():
    model = tiny_model("tiny_llama")
    adapter = adapter_for(model)
    gates = compresso.Gates(adapter, ["heads", "neurons", "hidden"], 0.01, 2 / 3)
    assert gates.dense == adapter.prunable_parameters()
    for g in gates.gates.values():  # every gate open for sure: nothing expected to go
        g.log_alpha.data.fill_(50.0)
    assert gates.expected_sparsity().item() == pytest.approx(0.0, abs=1e-6)
    gates.gates["neurons"].log_alpha.data[0].fill_(-50.0)  # layer 0's FFN closed for sure
    mlp_share = 3 * 64 * 128 / adapter.prunable_parameters()
    assert gates.expected_sparsity().item() == pytest.approx(mlp_share, rel=1e-5)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
def test_a_closed_gate_removes_exactly_its_structure(name, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(name).eval()
    adapter = adapter_for(model)
    gates = compresso.Gates(adapter, ["heads", "neurons", "hidden"], 0.01, 2 / 3)
    z = {k: torch.ones(v) for k, v in gates.dims.items()}
    z["heads"][1, 0] = 0.0
    z["neurons"][0, 5] = 0.0
    z["neurons"][1, :20] = 0.7   # a kept gate below 1 is folded into the weights
    closed_dims = torch.tensor([3, 7, 11, 40])
    z["hidden"][closed_dims] = 0.0
    gates.deterministic = lambda: z  # the gates a run would have learned
    gates.eval()
    handles = compresso.install(adapter, gates)
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        gated = model(ids).logits
    for h in handles:
        h.remove()
    kept = compresso.fold(adapter, z)
    assert kept["heads"][1] == adapter.attention(adapter.layers()[1]).num_heads - 2  # one KV group of 2 heads
    assert kept["hidden"] == 64 - 4
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gated, rtol=1e-5, atol=1e-5)
    emb = adapter.embeddings().weight
    assert (emb[:, closed_dims] == 0).all() and (emb.abs().sum(0) > 0).sum() == 60
    att0, att1 = adapter.attention(adapter.layers()[0]), adapter.attention(adapter.layers()[1])
    assert (att1.k.weight[:16] == 0).all() and (att1.k.weight[16:, :].abs().sum(1) > 0).all()
    assert (adapter.mlp(adapter.layers()[0]).output.weight[:, 5] == 0).all()
    compact.compact(model)
    assert adapter.embeddings().weight.shape[1] == 60 and att0.q.in_features == 64  # old module
    assert adapter.attention(adapter.layers()[1]).num_kv_heads == 1
    assert adapter.mlp(adapter.layers()[0]).output.in_features == 127
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gated, rtol=1e-4, atol=1e-4)
    compact.save(model, None, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(compact.load(tmp_path)(ids).logits, gated, rtol=1e-4, atol=1e-4)


def test_instruction_examples_mask_the_context(tmp_path):
    from surgeon.model.load import load_tokenizer

    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA[:3]))
    records = instructions.from_file(str(path))
    tok = load_tokenizer("smollm2_135m")
    ex = instructions.tokenize(records, tok, "You are being pruned.", 256)
    context, response = instructions.render(records[0], "You are being pruned.")
    assert context.startswith("You are being pruned.") and response == "0 plus 0 is 0."
    n_ctx = len(tok(context, add_special_tokens=False)["input_ids"])
    assert all(label == -100 for label in ex[0]["labels"][:n_ctx])
    assert ex[0]["labels"][n_ctx:] == ex[0]["input_ids"][n_ctx:] and ex[0]["labels"][-1] == tok.eos_token_id
    (tmp_path / "bad.json").write_text(json.dumps([{"question": "?"}]))
    with pytest.raises(SurgeonError, match="lacks 'instruction' or 'output'"):
        instructions.from_file(str(tmp_path / "bad.json"))


def test_olmo_reasoning_set_is_alpaca_shaped():
    records = instructions.olmo_reasoning()
    assert len(records) == 5000 + 1319 + 500
    assert all(r["instruction"] and r["output"] for r in records)
    assert "The answer is" in records[5000]["output"] and records[-1]["input"].startswith("assert")


def test_perplexity_with_a_prefix_scores_the_same_targets():
    model = tiny_model("tiny_llama").eval()
    windows, prefix = torch.randint(0, 256, (3, 16)), torch.randint(0, 256, (5,))
    got = perplexity(model, windows, "cpu", 2, prefix=prefix)
    with torch.no_grad():
        logits = model(torch.cat([prefix.expand(3, -1), windows], 1)).logits[:, 5:-1]  # predict windows[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), windows[:, 1:].reshape(-1))
    assert got == pytest.approx(nll.exp().item(), rel=1e-5)
    assert perplexity(model, windows, "cpu", 2) != pytest.approx(got, rel=1e-3)


def _cfg(compose_cfg, tmp_path, *extra):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA))
    return compose_cfg("model=tiny_llama", "logger=none", "eval.seq_len=32", "eval.max_tokens=128",
                       "eval.corpora=[wiki_heldout]", "eval.cache_dense=false", "method=compresso",
                       f"method.data.path={path}", "method.data.seq_len=64", "method.batch_size=2", "method.prompt.text=You are being pruned.",
                       "latency.repeats=1", "latency.new_tokens=4", *extra)


def test_gates_reach_the_target_size(compose_cfg, tmp_path):
    cfg = _cfg(compose_cfg, tmp_path, "sparsity=0.3", "method.steps=200", "method.warmup_steps=40",
               "method.gates=[heads,neurons]", "method.prompt.eval=false", "method.finetune_steps=10")
    res = execute(cfg, tmp_path / "run")
    train = res["training"]
    assert train["learned_sparsity"] == pytest.approx(0.3, abs=0.05)  # the Lagrangian alone
    assert abs(train["held_shift"]) < 1.0  # the hold is a small correction, not the mechanism
    # held to the target: within one neuron-or-unit step of the tiny model's size (~1%)
    assert res["achieved_sparsity"] == pytest.approx(0.3, abs=0.01)
    assert [h["phase"] for h in train["history"]][-1] == "finetune"
    tuned = [h["expected_sparsity"] for h in train["history"] if h["phase"] == "finetune"]
    assert tuned == pytest.approx([res["achieved_sparsity"]] * len(tuned), abs=1e-6)  # gates frozen
    assert res["compaction"]["max_logit_diff"] < 1e-4
    assert res["compaction"]["after"]["params"] < res["compaction"]["before"]["params"]
    from surgeon import plots, tables

    plots.main([str(tmp_path / "run"), "--out", str(tmp_path / "fig")])
    assert (tmp_path / "fig" / "training_compresso_heads_neurons_30.png").stat().st_size > 0
    rows = tables.build([res])["wiki_heldout"]["rows"]
    assert set(rows) == {"dense", "compresso"}  # no prompt measured at inference: no extra row
    res["ppl_prompt"], res["training"]["prompt_in_training"] = {"wiki_heldout": 1.0}, False
    rows = tables.build([res])["wiki_heldout"]["rows"]
    assert rows["compresso (no prompt), prompt at inference"] == {"heads_neurons 30%": 1.0}


def test_hold_to_target_keeps_the_ranking_and_hits_the_size():
    adapter = adapter_for(tiny_model("tiny_llama"))
    gates = compresso.Gates(adapter, ["heads", "neurons", "hidden"], 0.01, 2 / 3)
    with torch.no_grad():
        for g in gates.gates.values():
            g.log_alpha.normal_(0, 2)
    order = {k: g.log_alpha.argsort(-1) for k, g in gates.gates.items()}
    for target in (0.1, 0.35, 0.6):
        shift = gates.hold_to(target)
        z = gates.deterministic()
        assert gates.sparsity_of(z) == pytest.approx(target, abs=0.02), shift
        assert all(torch.equal(g.log_alpha.argsort(-1), order[k]) for k, g in gates.gates.items())
        # the size counts what compaction removes: kept hidden x (units, neurons) parameters
        hidden = int((z["hidden"] > 0).sum())
        kept = hidden * sum(int((z["heads"][i] > 0).sum()) * gates.unit_params
                            + int((z["neurons"][i] > 0).sum()) * gates.neuron_params for i in range(len(z["heads"])))
        assert gates.sparsity_of(z) == pytest.approx(1 - kept / gates.dense)


def test_training_is_seeded_and_repeatable(compose_cfg, tmp_path):
    cfg = _cfg(compose_cfg, tmp_path, "sparsity=0.3", "method.steps=8", "method.warmup_steps=4",
               "method.prompt.eval=false", "compact=false")
    a, b = execute(cfg, tmp_path / "a"), execute(cfg, tmp_path / "b")
    assert a["training"]["history"] == [dict(h, elapsed_s=h2["elapsed_s"]) for h, h2 in
                                        zip(b["training"]["history"], a["training"]["history"])]
    assert a["ppl"] == b["ppl"]


def test_bad_compresso_configs(compose_cfg, tmp_path):
    with pytest.raises(SurgeonError, match="method.gates must be"):
        check(_cfg(compose_cfg, tmp_path, "method.gates=[heads,layers]"))
    with pytest.raises(SurgeonError, match="use structure=heads_neurons"):
        check(_cfg(compose_cfg, tmp_path, "structure=unstructured", "method.structures=[unstructured]"))
    with pytest.raises(SurgeonError, match="is not a file"):
        check(_cfg(compose_cfg, tmp_path, "method.data.path=/nonexistent.json"))
    with pytest.raises(SurgeonError, match="prompt.text is empty"):
        check(_cfg(compose_cfg, tmp_path, "method.prompt.text=''"))
    with pytest.raises(SurgeonError, match="cannot drop hidden dimensions"):
        check(_cfg(compose_cfg, tmp_path, "model=tiny_opt"))  # before any model is loaded
