"""A whole run on a tiny model: the results.json contract, saving and reloading, the tables."""
import json

import pytest
import torch

from surgeon.run import execute

CONTRACT = ["model", "method", "curvature", "structure", "schedule", "seed", "target_sparsity",
            "achieved_sparsity", "params_dense", "params_pruned", "ppl_dense", "ppl", "eval_protocol",
            "time_s", "peak_rss_mb", "config"]
QUICK = ["model=tiny_llama", "logger=none", "calibration.num_samples=4", "calibration.seq_len=64",
         "eval.seq_len=64", "eval.max_tokens=512", "eval.cache_dense=false"]


def test_run_contract_and_saved_model_reloads(compose_cfg, tmp_path):
    from transformers import AutoModelForCausalLM

    from surgeon import eval as evaluation
    from surgeon.model.load import load_tokenizer

    cfg = compose_cfg(*QUICK, "method=sparsegpt", "structure=nm", "save=true")
    res = execute(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    for key in CONTRACT:
        assert key in on_disk, key
    assert on_disk["structure"] == "2:4" and on_disk["target_sparsity"] == 0.5
    assert on_disk["achieved_sparsity"] == pytest.approx(0.5)
    assert set(on_disk["ppl"]) == {"wiki_heldout", "webtext", "ptb"}
    assert on_disk["eval_protocol"]["tokens"]["ptb"] == 512
    assert set(on_disk["time_s"]) >= {"prune", "eval", "total"}

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32).eval()
    windows = evaluation.build_windows(cfg.eval, load_tokenizer("smollm2_135m"), None)
    ppl = evaluation.evaluate(reloaded, windows, torch.device("cpu"), 1)
    for corpus, value in res["ppl"].items():
        assert ppl[corpus] == pytest.approx(value, rel=1e-5)


def test_tables_from_synthetic_results(tmp_path):
    from surgeon import tables

    def write(i, method, structure, sparsity, ppl):
        d = tmp_path / str(i)
        d.mkdir()
        (d / "results.json").write_text(json.dumps({
            "method": method, "structure": structure, "target_sparsity": sparsity,
            "ppl": {"wiki_heldout": ppl}, "ppl_dense": {"wiki_heldout": 20.0},
            "eval_protocol": {"seq_len": 512, "tokens": {"wiki_heldout": 65536}}}))

    write(0, "magnitude", "unstructured", 0.5, 90.0)
    write(1, "sparsegpt", "unstructured", 0.5, 30.0)
    write(2, "sparsegpt", "2:4", 0.5, 45.0)
    write(3, "wanda", "2:4", 0.5, 50.0)
    tables.main([str(tmp_path)])
    md = (tmp_path / "tables.md").read_text().splitlines()
    assert "| method | unstructured 50% | 2:4 |" in md
    assert "| dense | 20.00 | 20.00 |" in md
    assert "| magnitude | 90.00 | — |" in md
    assert "| sparsegpt | **30.00** | **45.00** |" in md
    assert "\\textbf{30.00}" in (tmp_path / "tables.tex").read_text()


def test_multishot_run_fills_intermediate_columns_and_plots(compose_cfg, tmp_path):
    from surgeon import plots, tables

    cfg = compose_cfg(*QUICK, "method=llm_surgeon", "structure=rows_cols", "sparsity=0.2", "schedule.shots=2",
                      "schedule.eval_max_tokens=null", "eval.corpora=[wiki_heldout]", "method.max_correlate=64")
    res = execute(cfg, tmp_path)
    first, last = res["shots"]
    assert first["full_eval"] and first["target_sparsity"] == pytest.approx(0.1)
    assert res["ppl"] == last["ppl"]  # the last shot's full evaluation is the result, not re-run
    assert first["curvature_s"] > 0 and first["update_s"] > 0 and first["prune_s"] >= first["curvature_s"]
    tables.main([str(tmp_path)])
    md = (tmp_path / "tables.md").read_text()
    assert "| method | rows_cols 10% | rows_cols 20% |" in md
    plots.main([str(tmp_path)])
    assert (tmp_path / "allocation_llm_surgeon_rows_cols_20.png").stat().st_size > 0
    assert (tmp_path / "shots_rows_cols.pdf").stat().st_size > 0
    by_layer = plots.allocation_by_layer(res)
    total = sum(s * r["numel"] for r in res["layers"] for s in [r["sparsity"]]) / res["params_dense"]
    assert total == pytest.approx(res["achieved_sparsity"], abs=1e-6)
    assert len(by_layer["layer total"]) == 2


def test_slimgpt_run_compacts_and_reports_what_it_bought(compose_cfg, tmp_path):
    from surgeon import compact

    cfg = compose_cfg(*QUICK, "method=slimgpt", "sparsity=0.5", "save=true", "eval.corpora=[wiki_heldout]",
                      "latency.new_tokens=4", "latency.repeats=1")
    res = execute(cfg, tmp_path)
    c = res["compaction"]
    assert res["structure"] == "heads_neurons" and res["schedule"] == "incremental_ratio"
    ratios = res["shots"][0]["layer_ratios"]
    assert ratios[1] > ratios[0] and sum(ratios) / len(ratios) == pytest.approx(0.5)
    assert c["max_logit_diff"] < 1e-3
    assert c["after"]["params"] < c["before"]["params"] and c["after"]["file_bytes"] < c["before"]["file_bytes"]
    assert c["before"]["params"] - c["after"]["params"] >= res["params_dense"] - res["params_pruned"]
    reloaded = compact.load(tmp_path / "model")
    assert compact.parameter_count(reloaded) == c["after"]["params"]


def test_rerun_sweep_skips_finished_jobs(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "surgeon.run", "-m", "method=magnitude,wanda", *QUICK,
           "eval.corpora=[ptb]", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${method.name}"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    stamp = (tmp_path / "wanda" / "results.json").stat().st_mtime_ns
    (tmp_path / "magnitude" / "results.json").unlink()  # as if that job had crashed
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "wanda already has results.json: skipped" in second.stdout
    assert (tmp_path / "wanda" / "results.json").stat().st_mtime_ns == stamp
    assert (tmp_path / "magnitude" / "results.json").exists()


def test_tables_name_ratio_ablations_and_report_compaction(tmp_path):
    from surgeon import tables

    def res(method, curve, ppl, ms):
        return {"method": method, "structure": "heads_neurons", "target_sparsity": 0.5, "schedule": "incremental_ratio",
                "config": {"schedule": {"name": "incremental_ratio", "curve": curve}},
                "ppl": {"wiki_heldout": ppl}, "ppl_dense": {"wiki_heldout": 20.0},
                "compaction": {"before": {"params": 2e6, "file_bytes": 8 * 2**20, "ms_per_token": ms},
                               "after": {"params": 1e6, "file_bytes": 4 * 2**20, "ms_per_token": ms / 2},
                               "max_logit_diff": 0.0}}

    rs = [res("slimgpt", "log", 30.0, 10.0), res("slimgpt", "uniform", 35.0, 10.0)]
    md = tables.markdown(tables.build(rs))
    assert "| slimgpt | **30.00** |" in md and "| slimgpt (uniform ratios) | 35.00 |" in md
    comp = tables.compaction(rs)
    assert "| 2.0M | 1.0M | 8 | 4 | 10.0 | 5.0 | 2.00x |" in comp
