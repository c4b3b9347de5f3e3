"""Sweeps, resume and tables that never mislead: a folder holds one run's results and says so,
a sweep accounts for every job, a finished result is never lost, tables never mix what does not
compare."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from surgeon.errors import SurgeonError

QUICK = ["model=tiny_llama", "logger=none", "calibration.num_samples=4", "calibration.seq_len=64",
         "eval.seq_len=64", "eval.max_tokens=512", "eval.cache_dense=false", "eval.corpora=[ptb]"]


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "surgeon.run", *args], capture_output=True, text=True,
                          timeout=timeout)


def _errors(proc) -> list[str]:
    return [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]


def test_resume_skips_the_same_run_refuses_another_and_replaces_nothing_silently(tmp_path):
    run = tmp_path / "run"
    first = _run("method=magnitude", "sparsity=0.3", *QUICK, f"hydra.run.dir={run}", "save=true")
    assert first.returncode == 0, first.stderr[-2000:]
    stamp = (run / "results.json").stat().st_mtime_ns
    written = (run / ".hydra" / "config.yaml").read_text()
    assert "sparsity: 0.3" in written and "sparsity=0.3" in (run / ".hydra" / "overrides.yaml").read_text()

    same = _run("method=magnitude", "sparsity=0.3", *QUICK, f"hydra.run.dir={run}", "save=true", "threads=1")
    assert same.returncode == 0 and "already holds this run's results.json: skipped" in same.stdout
    other = _run("method=magnitude", "sparsity=0.7", *QUICK, f"hydra.run.dir={run}", "save=true")
    assert other.returncode == 2
    lines = _errors(other)
    assert len(lines) == 1 and "holds the results of a different run (sparsity: 0.3 there, 0.7 here)" in lines[0]
    # neither touched the folder: the results and the description of the run that made them
    assert (run / "results.json").stat().st_mtime_ns == stamp
    assert (run / ".hydra" / "config.yaml").read_text() == written

    again = _run("method=magnitude", "sparsity=0.7", *QUICK, f"hydra.run.dir={run}", "save=true", "resume=false")
    assert again.returncode == 0, again.stderr[-2000:]
    kept = list(run.glob("previous-*"))
    assert len(kept) == 1 and json.loads((kept[0] / "results.json").read_text())["target_sparsity"] == 0.3
    assert (kept[0] / "model" / "config.json").exists()
    assert json.loads((run / "results.json").read_text())["target_sparsity"] == 0.7
    assert "sparsity: 0.7" in (run / ".hydra" / "config.yaml").read_text()


def test_a_second_run_in_a_busy_folder_is_refused(tmp_path, compose_cfg):
    from surgeon.tracking import run_dir

    cfg = compose_cfg("method=magnitude", *QUICK)
    with run_dir.claim(tmp_path, cfg):  # as a run in progress holds it
        busy = _run("method=magnitude", *QUICK, f"hydra.run.dir={tmp_path}")
    assert busy.returncode == 2
    lines = _errors(busy)
    assert len(lines) == 1 and f"another run (pid {os.getpid()}) is using {tmp_path}" in lines[0]
    assert "another run" in (tmp_path / "run.log").read_text()  # the failure is in the run's log too
    with run_dir.claim(tmp_path, cfg):  # released: the next one may
        pass


def test_a_sweep_accounts_for_every_job_and_fails_when_one_did(tmp_path):
    sweep = tmp_path / "sweep"
    done = _run("-m", "method=magnitude", "sparsity=1.5,0.5,1.2", *QUICK, f"hydra.sweep.dir={sweep}",
                "hydra.sweep.subdir=${sparsity}")
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"[surgeon] sweep {sweep}: 1 done, 0 skipped, 2 failed" in done.stdout
    assert "1.5: error: sparsity must be in [0, 1), got 1.5" in done.stderr
    assert not (sweep / "1.5" / "results.json").exists() and (sweep / "0.5" / "results.json").exists()
    assert "sparsity must be in [0, 1), got 1.2" in (sweep / "1.2" / "run.log").read_text()
    again = _run("-m", "method=magnitude", "sparsity=0.5", *QUICK, f"hydra.sweep.dir={sweep}",
                 "hydra.sweep.subdir=${sparsity}")
    assert again.returncode == 0 and "0 done, 1 skipped, 0 failed" in again.stdout


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_sweep_leaves_whole_results_and_resumes(tmp_path, sig):
    sweep = tmp_path / "sweep"
    args = ["-m", "method=magnitude,llm_surgeon", "schedule.shots=8", "schedule.eval_every=1", "method.max_correlate=64",
            "structure=unstructured", *QUICK, f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${method.name}"]
    # a shell's background job (nohup ... &, as CI scripts may run) ignores SIGINT, and a child would inherit
    # that: the job starts with the default disposition, as a terminal's Ctrl-C meets it
    proc = subprocess.Popen([sys.executable, "-m", "surgeon.run", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first, second = sweep / "magnitude" / "results.json", sweep / "llm_surgeon" / "run.log"
    deadline = time.time() + 240
    while not second.exists() and time.time() < deadline:  # the second job has begun: its log is open
        time.sleep(0.05)
    time.sleep(0.5)  # into its shots (8, each evaluated: seconds of work), however loaded the machine
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert first.exists()
    for f in sweep.rglob("results.json"):
        json.loads(f.read_text())  # whole, or not there
    resumed = _run(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "1 done, 1 skipped" in resumed.stdout and (sweep / "llm_surgeon" / "results.json").exists()


def test_a_result_that_cannot_be_written_goes_to_a_named_fallback(tmp_path, monkeypatch):
    from surgeon.tracking import results

    real = results.write_json_atomic

    def read_only(path, data):
        if path.parent == tmp_path:
            raise OSError(30, "Read-only file system", str(path))
        real(path, data)

    monkeypatch.setattr(results, "write_json_atomic", read_only)
    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path / "cache"))
    err = results.save({"ppl": {"ptb": 1.0}}, tmp_path)
    assert isinstance(err, SurgeonError) and "Read-only file system" in str(err)
    fallback = next((tmp_path / "cache" / "unsaved").rglob("results.json"))
    assert str(fallback) in str(err) and json.loads(fallback.read_text()) == {"ppl": {"ptb": 1.0}}


def test_results_follow_the_umask(tmp_path):
    from surgeon.tracking.results import write_json_atomic

    old = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "results.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o640


def _result(tmp_path, name, model, ppl, seed=0, sparsity=0.5, tokens=4096, date=None):
    d = tmp_path / name
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({**({"environment": {"date": date}} if date else {}),
        "model": model, "method": "magnitude", "structure": "unstructured", "target_sparsity": sparsity,
        "seed": seed, "ppl": {"ptb": ppl}, "ppl_dense": {"ptb": 20.0 if model == "smollm2_135m" else 49117.0},
        "config": {"model": {"dtype": "float32"}},
        "eval_protocol": {"seq_len": 512, "tokens": {"ptb": tokens}}}))
    time.sleep(0.01)
    return d


def test_tables_keep_models_and_protocols_apart(tmp_path, capsys):
    from surgeon import tables

    _result(tmp_path, "a", "smollm2_135m", 90.0)
    _result(tmp_path, "b", "tiny_llama", 49500.0)
    _result(tmp_path, "c", "smollm2_135m", 95.0, tokens=8192)  # another protocol
    tables.main([str(tmp_path)])
    md = (tmp_path / "tables.md").read_text()
    assert "3 groups" in capsys.readouterr().err
    sections = md.split("## ")[1:]
    assert len(sections) == 3
    small = next(s for s in sections if s.startswith("smollm2_135m, float32, 512-token windows (ptb 4,096)"))
    assert "| dense | 20.00 |" in small and "| magnitude | **90.00** |" in small and "49" not in small
    tiny = next(s for s in sections if s.startswith("tiny_llama"))
    assert "| dense | 49117.00 |" in tiny and "| magnitude | **49500.00** |" in tiny


def test_tables_never_silently_replace_a_duplicate(tmp_path, capsys):
    from surgeon import tables

    _result(tmp_path, "x/old", "smollm2_135m", 279.90)
    _result(tmp_path, "y/new", "smollm2_135m", 646.41)  # same seed, newer
    _result(tmp_path, "z/seed1", "smollm2_135m", 100.0, seed=1, sparsity=0.6)
    _result(tmp_path, "z/seed2", "smollm2_135m", 110.0, seed=2, sparsity=0.6)
    tables.main([str(tmp_path)])
    err, md = capsys.readouterr().err, (tmp_path / "tables.md").read_text()
    assert "warning: 2 runs of magnitude unstructured 50% (ptb) with seed 0" in err
    assert "y/new/results.json) is shown" in err
    assert "| magnitude | **646.41** | **105.00 ± 7.07 (n=2)** |" in md


def test_tables_pick_the_newer_duplicate_by_its_recorded_date_not_its_file_time(tmp_path, capsys):
    """A checkout gives every file a new time, so the pick must come from results.json: its date,
    and for runs from before dates were recorded, the path."""
    from surgeon import tables

    _result(tmp_path, "a/new", "smollm2_135m", 250.41, date="2026-12-07T11:58:37+0000")
    _result(tmp_path, "b/old", "smollm2_135m", 253.20, date="2026-12-01T09:00:00+0000")  # written last
    _result(tmp_path, "c/undated", "smollm2_135m", 260.0)
    tables.main([str(tmp_path)])
    assert "a/new/results.json) is shown" in capsys.readouterr().err
    assert "| magnitude | **250.41** |" in (tmp_path / "tables.md").read_text()


def test_allocation_plot_of_a_flat_allocation_has_no_offset_axis(tmp_path):
    import matplotlib.pyplot as plt

    from surgeon import plots

    r = {"model": "m", "method": "sparsegpt", "structure": "2:4", "target_sparsity": 0.5,
         "achieved_sparsity": 0.500005, "layers": [{"layer": i, "name": "q", "numel": 100,
                                                    "sparsity": 0.5 + (1e-5 if i == 3 else 0.0)} for i in range(6)]}
    seen = {}
    real = plots._save
    plots._save = lambda fig, path: seen.update(ax=fig.axes[0]) or fig.canvas.draw()
    try:
        plots.plot_allocation(r, tmp_path / "a")
    finally:
        plots._save = real
    ax = seen["ax"]
    assert ax.yaxis.get_major_formatter().get_offset() == ""
    assert ax.get_ylim()[0] == 0.0 and ax.get_ylim()[1] >= 0.5
    plt.close("all")
