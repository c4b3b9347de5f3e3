"""A whole run on a tiny model: the results.json contract, saving and reloading, the tables."""
import json

import pytest
import torch

from surgeon.run import execute

CONTRACT = ["model", "method", "curvature", "structure", "schedule", "seed", "target_sparsity",
            "achieved_sparsity", "params_dense", "params_pruned", "ppl_dense", "ppl", "eval_protocol",
            "time_s", "peak_rss_mb", "config", "environment", "memory"]
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
    env, mem = on_disk["environment"], on_disk["memory"]
    assert len(env["commit"].split("-")[0]) == 40 and env["packages"]["torch"] == torch.__version__
    assert env["cpu"] and env["cores"] >= 1 and env["gpu"] is None
    # one layer (and the trunk) at a time while pruning; evaluation holds the whole model on a CPU
    assert 0 < mem["peak_device_param_bytes"] <= mem["model_param_bytes"]

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
    assert (tmp_path / "ppl_vs_sparsity_rows_cols.png").stat().st_size > 0
    xs, ys = plt_line(plots, [res])
    assert xs == pytest.approx([0.0, first["achieved_sparsity"], res["achieved_sparsity"]])  # dense, shot 1, end
    assert ys[0] == res["ppl_dense"]["wiki_heldout"] and ys[-1] == res["ppl"]["wiki_heldout"]
    assert plt_line(plots, [res], plots.plot_shots)[0][0] == 0.0
    capped = {**res, "shots": [{**s, "full_eval": False} for s in res["shots"]]}  # a shorter per-shot eval
    assert plt_line(plots, [capped], plots.plot_shots)[0] == [s["achieved_sparsity"] for s in res["shots"]]
    by_layer = plots.allocation_by_layer(res)
    total = sum(s * r["numel"] for r in res["layers"] for s in [r["sparsity"]]) / res["params_dense"]
    assert total == pytest.approx(res["achieved_sparsity"], abs=1e-6)
    assert len(by_layer["layer total"]) == 2


def plt_line(plots, results, plot=None):
    """The (x, y) data of the first line `plot` (default: plot_sweep) draws."""
    import matplotlib.pyplot as plt

    captured = {}
    real_save = plots._save
    plots._save = lambda fig, path: captured.setdefault("line", fig.axes[0].lines[0].get_data())
    try:
        (plot or plots.plot_sweep)(results, None)
    finally:
        plots._save = real_save
        plt.close("all")
    return list(captured["line"][0]), list(captured["line"][1])


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
    assert c["reload"]["loader"] == "surgeon.compact.load" and c["reload"]["max_logit_diff"] < 1e-3  # ratios differ by layer
    assert c["after"]["params"] < c["before"]["params"] and c["after"]["file_bytes"] < c["before"]["file_bytes"]
    assert c["before"]["params"] - c["after"]["params"] >= res["params_dense"] - res["params_pruned"]
    reloaded = compact.load(tmp_path / "model")
    assert compact.parameter_count(reloaded) == c["after"]["params"]


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


def test_tables_label_every_departure_from_the_llm_surgeon_preset():
    from surgeon import tables

    def res(**cfg):
        base = {"schedule": {"name": "linear"},
                "method": {"name": "llm_surgeon", "allocation": "global", "update": "correlated"},
                "structure": {"name": "nm", "fill": "groups", "select": "costs"},
                "curvature": {"name": "kfac", "damp_g": 0.1}}
        return {"method": "llm_surgeon", "config": {k: {**v, **cfg.get(k, {})} for k, v in base.items()}}

    assert tables.label(res()) == "llm_surgeon"
    assert tables.label(res(structure={"fill": "elements"})) == "llm_surgeon (element fill)"
    assert tables.label(res(structure={"fill": "pattern"})) == "llm_surgeon (pattern fill)"
    both = res(structure={"select": "sequential"}, curvature={"damp_g": 1.0})
    assert tables.label(both) == "llm_surgeon (sequential N:M, damp_g 1.0)"
    sampled = res(curvature={"damp_g": 1.0, "fisher": True})  # as `curvature.fisher=true` composes
    assert tables.label(sampled) == "llm_surgeon (damp_g 1.0, true Fisher)"
    per_layer = res(method={"allocation": "layer"}, curvature={"damp_g": 1.0})  # the global threshold ablated
    assert tables.label(per_layer) == "llm_surgeon (allocation layer, damp_g 1.0)"
    assert tables.label(res(method={"update": "none"})) == "llm_surgeon (update none)"
    on_hessian = res(method={"allocation": "layer"}, curvature={"name": "hessian", "dtype": "float64"})
    assert tables.label(on_hessian) == "llm_surgeon (curvature hessian, allocation layer, float64)"
    rows_cols = {"name": "rows_cols"}  # (the nm keys of res() are left at their defaults)
    assert tables.label(res(structure={**rows_cols, "coupled": True})) == "llm_surgeon"
    assert tables.label(res(structure=rows_cols)) == "llm_surgeon (uncoupled)"  # run before structure.coupled
    double = {"method": "sparsegpt", "config": {"method": {"name": "sparsegpt"},
                                                "curvature": {"name": "hessian", "dtype": "float64"}}}
    assert tables.label(double) == "sparsegpt (float64)"
    assert tables.label({**double, "config": {"curvature": {"name": "hessian", "dtype": "float32"}}}) == "sparsegpt"


def _wandb_records(path):
    """The protobuf records of an offline .wandb file (LevelDB log format: 7-byte file header,
    32 KiB blocks of [crc32, length, kind] chunks; kinds 1 = whole record, 2-4 = its parts)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def test_wandb_offline_sweep_is_grouped_flattened_and_keeps_artifacts(monkeypatch, tmp_path):
    import subprocess
    import sys

    from surgeon import tables

    monkeypatch.setenv("WANDB_MODE", "offline")
    quick = [o for o in QUICK if not o.startswith("logger=")]
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "surgeon.run", "-m", "method=magnitude", "sparsity=0.3,0.5", *quick,
           "logger=wandb", "logger.mode=offline", "eval.corpora=[ptb]", f"hydra.sweep.dir={sweep}",
           "hydra.sweep.subdir=${sparsity}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    tables.main([str(sweep), "--wandb"])
    seen = {}
    for f in sorted(sweep.glob("**/offline-run-*/run-*.wandb")):  # one offline run per job + the tables run
        recs = list(_wandb_records(f))
        run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
        arts = [(r.artifact.type, [e.path for e in r.artifact.manifest.contents])
                for r in recs if r.WhichOneof("record_type") == "artifact"]
        seen[run.job_type + " " + run.display_name] = (run.run_group, {u.key for u in run.config.update}, arts)
    assert set(seen) == {"magnitude 0.3", "magnitude 0.5", f"tables tables {sweep}"}
    assert {group for group, _, _ in seen.values()} == {str(sweep)}  # one W&B group per sweep
    keys = seen["magnitude 0.5"][1]
    assert {"method.name", "structure.name", "sparsity", "eval.seq_len"} <= keys and "method" not in keys
    assert seen["magnitude 0.5"][2] == [("results", ["results.json"])]
    assert seen[f"tables tables {sweep}"][2] == [("tables", ["tables.md", "tables.tex"])]


def test_results_name_the_commit_a_run_started_from(monkeypatch):
    """A checkout that moves on during an hour-long run, or between the jobs of a sweep run in one
    process, must not lend the run its new commit."""
    from surgeon.tracking import results

    monkeypatch.setattr(results, "_START", {})  # restored afterwards: later runs record their own start
    monkeypatch.setattr(results, "_git_commit", lambda: "a" * 40)
    results.start_accounting(torch.device("cpu"))
    monkeypatch.setattr(results, "_git_commit", lambda: "b" * 40)
    assert results.environment(torch.device("cpu"))["commit"] == "a" * 40
    results.start_accounting(torch.device("cpu"))  # the sweep's next job, same process, same code
    assert results.environment(torch.device("cpu"))["commit"] == "a" * 40


def test_a_tree_copied_without_git_names_the_commit_it_was_copied_from(monkeypatch):
    import subprocess

    from surgeon.tracking import results

    def no_git(*a, **k):
        raise FileNotFoundError("git")
    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.delenv("SURGEON_COMMIT", raising=False)
    assert results._git_commit() is None  # an installed wheel: nothing to name
    monkeypatch.setenv("SURGEON_COMMIT", "c" * 40)  # the GPU machine's copy (experiments/gpu/device.sh)
    assert results._git_commit() == "c" * 40


def test_tables_give_each_calibration_budget_its_own_row_only_where_budgets_differ():
    from surgeon import tables

    def res(method, n, ppl):
        return {"method": method, "structure": "unstructured", "target_sparsity": 0.5,
                "calibration": {"corpus": "wiki_leads", "num_samples": n, "seq_len": 512},
                "ppl": {"wiki_heldout": ppl}, "ppl_dense": {"wiki_heldout": 20.0},
                "eval_protocol": {"seq_len": 512, "tokens": {"wiki_heldout": 65536}}}

    mixed = [res("sparsegpt", 16, 44.0), res("sparsegpt", 128, 40.0), res("llm_surgeon", 128, 35.0)]
    md, _ = tables.render(mixed)
    assert "| sparsegpt (16 x 512 calibration) | 44.00 |" in md
    assert "| sparsegpt (128 x 512 calibration) | 40.00 |" in md
    assert "| llm_surgeon (128 x 512 calibration) | **35.00** |" in md
    md, _ = tables.render(mixed[1:])  # one budget: plain method names
    assert "| sparsegpt | 40.00 |" in md and "| llm_surgeon | **35.00** |" in md
    assert all("_budgets" not in r for r in mixed)  # the results are read, never marked

    from surgeon import plots

    lines = {}
    real_save = plots._save
    plots._save = lambda fig, path: lines.update({ln.get_label(): list(ln.get_ydata()) for ln in fig.axes[0].lines})
    try:
        plots.plot_sweep([{**r, "achieved_sparsity": 0.5, "model": "m"} for r in mixed], None)
    finally:
        plots._save = real_save
    assert lines == {"sparsegpt (16 x 512 calibration)": [20.0, 44.0], "sparsegpt (128 x 512 calibration)": [20.0, 40.0],
                     "llm_surgeon (128 x 512 calibration)": [20.0, 35.0]}  # two budgets never share a line
