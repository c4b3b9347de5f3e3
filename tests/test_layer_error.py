"""The layer-by-layer departure of a pruned model from its dense one (surgeon/layer_error.py)."""
import copy
import json

import pytest
import torch

from conftest import tiny_model
from surgeon import layer_error
from surgeon.eval.perplexity import perplexity
from surgeon.model.adapters import adapter_for


def _scaled(model, layer: int, factor: float):
    out = copy.deepcopy(model)
    ad = adapter_for(out)
    with torch.no_grad():
        for lin in ad.prunable_linears(ad.layers()[layer]).values():
            lin.weight.mul_(factor)
    return out


def test_local_error_of_a_layer_scaled_by_0_9_is_0_01_and_drift_starts_there():
    dense = tiny_model("tiny_llama").eval()  # no biases: (0.9 W - W) X = -0.1 W X exactly
    windows = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(0))
    pruned = _scaled(dense, 1, 0.9)
    e = layer_error.errors(dense, pruned, windows, batch=2)
    cpu = torch.device("cpu")
    assert e["ppl"] == pytest.approx(perplexity(pruned, windows, cpu), rel=1e-5)  # the eval protocol's figure
    assert e["ppl_dense"] == pytest.approx(perplexity(dense, windows, cpu), rel=1e-5)
    assert e["local"][0] == 0 and e["drift"][0] == 0
    assert e["local"][1] == pytest.approx(0.01, rel=1e-4)
    assert all(v[1] == pytest.approx(0.01, rel=1e-4) for v in e["local_by_linear"].values())
    assert e["drift"][1] > 0


def test_local_error_reads_dense_inputs_while_drift_compounds_through_depth():
    dense = tiny_model("tiny_llama").eval()
    windows = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    e = layer_error.errors(dense, _scaled(dense, 0, 0.5), windows)
    assert e["local"][0] == pytest.approx(0.25, rel=1e-4) and e["local"][1] == 0  # layer 1's weights are dense
    assert e["drift"][0] > 0 and e["drift"][1] > 0  # ... but its inputs are not
    same = layer_error.errors(dense, copy.deepcopy(dense), windows)
    assert same["local"] == [0, 0] and same["drift"] == [0, 0]


def test_a_saved_sparsegpt_run_gives_errors_between_zero_and_one_per_corpus(compose_cfg, tmp_path):
    from surgeon.run import execute

    cfg = compose_cfg("model=tiny_llama", "logger=none", "calibration.num_samples=4", "calibration.seq_len=64",
                      "eval.seq_len=64", "eval.max_tokens=256", "eval.cache_dense=false",
                      "eval.corpora=[wiki_heldout,ptb]", "method=sparsegpt", "sparsity=0.5", "save=true")
    execute(cfg, tmp_path / "run")
    layer_error.main([str(tmp_path / "run"), "--tokens", "128", "--out", str(tmp_path / "out")])
    res = json.loads((tmp_path / "out" / "layer_error.json").read_text())
    (run,) = res["runs"]
    assert run["label"] == "sparsegpt (4 x 64 calibration), unstructured 50%" and set(run["corpora"]) == {"wiki_heldout", "ptb"}
    for e in run["corpora"].values():
        assert all(0 < r < 1 for r in e["local"]) and all(d > 0 for d in e["drift"])
    assert (tmp_path / "out" / "layer_error.png").stat().st_size > 0
    assert "| 1-1 |" in (tmp_path / "out" / "layer_error.md").read_text()


def test_a_run_saved_without_its_model_fails_in_one_line_before_loading(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"model": "tiny_llama"}))
    with pytest.raises(SystemExit) as exit_:
        layer_error.main([str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "save=true" in err and not (tmp_path / "out").exists()


def test_one_dense_forward_for_many_runs_gives_each_runs_own_errors():
    dense = tiny_model("tiny_llama").eval()
    windows = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(2))
    a, b = _scaled(dense, 0, 0.8), _scaled(dense, 1, 0.7)
    both = layer_error.errors_of_many(dense, [a, b], windows, batch=2)
    for many, one in zip(both, (layer_error.errors(dense, a, windows), layer_error.errors(dense, b, windows))):
        assert many["local"] == pytest.approx(one["local"]) and many["drift"] == pytest.approx(one["drift"])
