"""Evaluating saved runs again (surgeon/evaluate.py): the figures equal what the run itself would have
measured under those settings, and nothing else in results.json is lost."""
import json

import pytest

from surgeon import evaluate
from surgeon.run import execute

RUN = ("model=tiny_llama", "logger=none", "method=magnitude", "sparsity=0.5", "eval.corpora=[ptb]",
       "eval.seq_len=32", "eval.cache_dense=false")
ZERO_SHOT = ("eval.zero_shot.tasks=[arc_easy,winogrande]", "eval.zero_shot.limit=4")


def test_zero_shot_and_perplexity_added_later_equal_the_runs_own(compose_cfg, tmp_path, capsys):
    within = execute(compose_cfg(*RUN, "eval.max_tokens=64", *ZERO_SHOT), tmp_path / "within")
    execute(compose_cfg(*RUN, "eval.max_tokens=128", "save=true"), tmp_path / "sweep" / "later")
    before = json.loads((tmp_path / "sweep" / "later" / "results.json").read_text())
    assert before["zero_shot"] is None

    evaluate.main([str(tmp_path / "sweep" / "later"), *ZERO_SHOT, "eval.max_tokens=64"])
    after = json.loads((tmp_path / "sweep" / "later" / "results.json").read_text())
    assert after["zero_shot"]["primary"] == pytest.approx(within["zero_shot"]["primary"])
    assert after["zero_shot_dense"]["primary"] == pytest.approx(within["zero_shot_dense"]["primary"])
    assert after["ppl"]["ptb"] == pytest.approx(within["ppl"]["ptb"], rel=1e-5)
    assert after["ppl_dense"]["ptb"] == pytest.approx(within["ppl_dense"]["ptb"], rel=1e-5)
    assert after["eval_protocol"]["tokens"] == within["eval_protocol"]["tokens"]
    assert after["config"]["eval"]["max_tokens"] == 64 and after["config"]["eval"]["zero_shot"]["limit"] == 4
    (entry,) = after["reevaluations"]
    assert entry["measured"] == ["ppl", "zero_shot"]
    assert entry["replaced"]["ppl"] == before["ppl"] and entry["replaced"]["zero_shot"] is None
    assert entry["environment"]["commit"] is not None or entry["environment"]["python"]
    assert {k: after[k] for k in ("layers", "time_s", "achieved_sparsity")} == \
           {k: before[k] for k in ("layers", "time_s", "achieved_sparsity")}

    evaluate.main([str(tmp_path / "sweep"), *ZERO_SHOT, "eval.max_tokens=64"])  # a multirun folder: its jobs
    assert "already follow these settings" in capsys.readouterr().out
    assert json.loads((tmp_path / "sweep" / "later" / "results.json").read_text()) == after


def test_only_what_the_overrides_change_is_measured(compose_cfg, tmp_path):
    execute(compose_cfg(*RUN, "eval.max_tokens=64", "save=true"), tmp_path)
    before = json.loads((tmp_path / "results.json").read_text())
    evaluate.main([str(tmp_path), *ZERO_SHOT, "eval.batch_size=2"])  # batch size changes no figure
    after = json.loads((tmp_path / "results.json").read_text())
    assert after["reevaluations"][0]["measured"] == ["zero_shot"]
    assert after["ppl"] == before["ppl"] and after["config"]["eval"]["batch_size"] == before["config"]["eval"]["batch_size"]


@pytest.mark.parametrize("args, message", [
    (["sparsity=0.6"], "'sparsity' is part of how the run pruned"),
    (["eval.no_such_key=1"], "override not in the run's config"),
    (["eval.corpora=[no_corpus]"], "no_corpus"),
    (["eval.zero_shot.tasks=[piqa]", "eval.zero_shot.limit=0"], "eval.zero_shot.limit must be"),
])
def test_bad_overrides_give_one_line_before_any_model_loads(compose_cfg, tmp_path, capsys, args, message):
    execute(compose_cfg(*RUN, "eval.max_tokens=64", "save=true"), tmp_path)
    before = (tmp_path / "results.json").read_text()
    capsys.readouterr()  # the run's own output
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(tmp_path), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "results.json").read_text() == before


def test_a_run_without_a_saved_model_is_refused(compose_cfg, tmp_path, capsys):
    execute(compose_cfg(*RUN, "eval.max_tokens=64"), tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(tmp_path / "run"), *ZERO_SHOT])
    assert e.value.code == 2 and "save=true" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / "nothing_here"), *ZERO_SHOT])
    assert "holds no results.json" in capsys.readouterr().err


def test_a_run_folder_whose_name_holds_an_equals_sign_is_a_run_not_an_override(compose_cfg, tmp_path):
    job = tmp_path / "sweep" / "method=magnitude,sparsity=0.5"  # how a multirun job's folder may be named
    execute(compose_cfg(*RUN, "eval.max_tokens=64", "save=true"), job)
    assert evaluate.split_args([str(job), "eval.max_tokens=32"]) == ([job], ["eval.max_tokens=32"])
    evaluate.main([str(job), "eval.max_tokens=32"])
    after = json.loads((job / "results.json").read_text())
    assert after["eval_protocol"]["tokens"]["ptb"] == 32 and after["reevaluations"][0]["measured"] == ["ppl"]
