"""OWL: per-layer ratios from outlier ratios (the math), and a run that prunes each layer to them."""
import pytest
import torch
from omegaconf import OmegaConf

from surgeon.config import CONF_DIR
from surgeon.layer_sparsity.owl import Owl, outlier_ratio, owl_ratios
from surgeon.run import execute
from tests.test_run import QUICK


def test_outlier_ratio_counts_scores_above_m_times_the_pooled_mean():
    scores = [torch.ones(10, 10), torch.tensor([[100.0, 1.0]])]  # pooled mean 200/102 ~ 1.96
    assert outlier_ratio(scores, 5) == pytest.approx(1 / 102)
    assert outlier_ratio(scores, 0.5) == pytest.approx(1.0)


def test_owl_ratios_average_to_the_target_within_lambda_and_fall_with_outliers():
    g = torch.Generator().manual_seed(0)
    outliers = torch.rand(30, generator=g).tolist()
    r = owl_ratios(outliers, 0.7, 0.08)
    assert sum(r) / 30 == pytest.approx(0.7)
    assert max(r) - min(r) == pytest.approx(0.16)  # the full 2 lambda, as in the paper
    assert all(abs(x - 0.7) <= 0.16 for x in r)
    order = sorted(range(30), key=lambda i: outliers[i])
    assert all(r[a] >= r[b] for a, b in zip(order, order[1:]))  # more outliers: pruned less
    assert owl_ratios([0.02] * 5, 0.5, 0.08) == pytest.approx([0.5] * 5)  # no spread to follow


def test_owl_ratios_stay_in_range_with_the_mean_kept():
    r = owl_ratios([0.0, 0.0, 1.0, 1.0], 0.05, 0.2, max_ratio=0.99)
    assert min(r) >= 0 and sum(r) / 4 == pytest.approx(0.05)


def test_owl_measures_the_wanda_score_outliers_of_the_dense_model():
    """The ratio of each layer equals the one computed by hand from its inputs' norms."""
    from surgeon import engine
    from surgeon.model.adapters import adapter_for
    from tests.conftest import tiny_model

    model = tiny_model("tiny_llama").eval()
    adapter = adapter_for(model)
    windows = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(1))
    cfg = OmegaConf.load(CONF_DIR / "layer_sparsity" / "owl.yaml")
    cfg.M = 2.0
    got = Owl(cfg).measure(adapter, windows, torch.device("cpu"))

    inputs = {}
    hooks = [lin.register_forward_hook(lambda m, i, o, key=(k, n): inputs.setdefault(key, []).append(i[0]))
             for k, layer in enumerate(adapter.layers()) for n, lin in adapter.prunable_linears(layer).items()]
    with torch.no_grad():
        for w in windows:
            model(w.unsqueeze(0), use_cache=False)
    for h in hooks:
        h.remove()
    for k, layer in enumerate(adapter.layers()):
        scores = []
        for n, lin in adapter.prunable_linears(layer).items():
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs[(k, n)]])
            scores.append(lin.weight.abs() * x.pow(2).mean(0).sqrt())
        assert got[k] == pytest.approx(outlier_ratio(scores, 2.0), abs=1e-6)
    assert engine  # the measurement ran layer by layer through the engine, nothing pruned
    assert all((lin.weight != 0).all() for layer in adapter.layers() for lin in adapter.prunable_linears(layer).values())


@pytest.mark.parametrize("method", ["wanda", "magnitude", "sparsegpt"])
def test_owl_run_prunes_each_layer_to_its_ratio(compose_cfg, tmp_path, method):
    cfg = compose_cfg(*QUICK, f"method={method}", "layer_sparsity=owl", "layer_sparsity.lambda=0.1",
                      "sparsity=0.6", "eval.corpora=[wiki_heldout]")
    res = execute(cfg, tmp_path)
    ratios = res["shots"][0]["layer_ratios"]
    assert sum(ratios) / len(ratios) == pytest.approx(0.6) and max(ratios) - min(ratios) == pytest.approx(0.2)
    assert res["achieved_sparsity"] == pytest.approx(0.6, abs=0.01)  # per-row counts round down
    for i, r in enumerate(ratios):
        layer = [x for x in res["layers"] if x["layer"] == i]
        got = sum(x["sparsity"] * x["numel"] for x in layer) / sum(x["numel"] for x in layer)
        assert got == pytest.approx(r, abs=0.02)
