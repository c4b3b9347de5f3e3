"""`python -m surgeon.evaluate RUN [RUN ...] [eval.KEY=VALUE ...]`: evaluate saved runs again under
another evaluation setting (zero-shot added after the fact, another corpus, more tokens), without
pruning again.

A run saved with `save=true` holds its pruned (or compacted) model in RUN/model; a multirun folder
stands for its jobs. The overrides change the run's recorded `eval` config (`device=` and `threads=`
say where to compute), and only what they change is measured:
  perplexity   when the corpora, seq_len or max_tokens differ from the run's: the pruned model and the
               dense one (from the dense cache when it holds them), on the new windows;
  zero-shot    when the tasks, source, limit or metric differ and tasks are given.
Each run's results.json is rewritten atomically with the new figures and config, and it gains a
`reevaluations` entry: the overrides, what was measured, the figures it replaced, times, peak memory
and the environment (commit, machine) of this pass, so that every figure still names the code that made
it. A job that fails leaves the others' files as they were; calling again skips a run whose figures
already follow the settings. The run's W&B record is not updated.
"""
import logging
import sys
import time
from functools import cache
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from surgeon.errors import SurgeonError

log = logging.getLogger("surgeon")

PPL_KEYS = ("corpora", "seq_len", "max_tokens")  # what perplexity figures depend on
ZERO_SHOT_KEYS = ("tasks", "source", "limit", "metric")  # ... and zero-shot accuracies


def run_folders(paths: list[Path]) -> list[Path]:
    """Run folders: each path itself (a results.json in it) or, for a multirun folder, its jobs."""
    out = []
    for p in paths:
        jobs = [p] if (p / "results.json").is_file() else sorted(q.parent for q in p.glob("*/results.json"))
        if not jobs:
            raise SurgeonError(f"{p} holds no results.json, nor do its subfolders: give run or multirun folders")
        out += jobs
    return out


def split_args(argv: list[str]) -> tuple[list[Path], list[str]]:
    """(run paths, overrides). An argument naming an existing path is a run even when it holds '=': a
    multirun job's folder is named after its overrides (e.g. `0_sparsity=0.5`)."""
    paths = [a for a in argv if "=" not in a or Path(a).exists()]
    return [Path(a) for a in paths], [a for a in argv if a not in paths]


def parse_overrides(args: list[str]):
    """The `key=value` arguments as a config; only eval.*, device and threads may change."""
    for a in args:
        key = a.partition("=")[0]
        if not (key.startswith("eval.") or key in ("device", "threads")):
            raise SurgeonError(f"'{key}' is part of how the run pruned: surgeon.evaluate changes only eval.*, "
                               "device and threads")
    try:
        return OmegaConf.from_dotlist(args)
    except OmegaConfBaseException as e:
        raise SurgeonError(f"cannot read the overrides {args}: {e}") from None


def merged(run_cfg, overrides):
    """The run's config with the overrides; a key the eval config does not have is an error."""
    cfg = OmegaConf.create(run_cfg)
    OmegaConf.set_struct(cfg, True)
    try:
        return OmegaConf.merge(cfg, overrides)
    except OmegaConfBaseException as e:
        raise SurgeonError(f"override not in the run's config: {str(e).splitlines()[0]}") from None


def to_measure(res: dict, cfg) -> list[str]:
    """What differs between the run's figures and the new eval config: "ppl", "zero_shot"."""
    old = res["config"]["eval"]
    new = OmegaConf.to_container(cfg.eval, resolve=True)
    what = []
    if any(old.get(k) != new[k] for k in PPL_KEYS):
        what.append("ppl")
    old_zs = old.get("zero_shot", {}) if res.get("zero_shot") else {}
    if new["zero_shot"]["tasks"] and any(old_zs.get(k) != new["zero_shot"][k] for k in ZERO_SHOT_KEYS):
        what.append("zero_shot")
    return what


def check(paths: list[Path], args: list[str]) -> list[tuple[Path, dict, object, list[str]]]:
    """(run folder, results, new config, what to measure) per run; one SurgeonError before any model loads."""
    from surgeon.plan import check_data
    from surgeon.tracking.results import saved_run

    overrides = parse_overrides(args)
    found = []
    for run in run_folders(paths):
        res = saved_run(run)
        cfg = merged(res["config"], overrides)
        check_data(cfg)
        found.append((run, res, cfg, to_measure(res, cfg)))
    return found


def evaluate(run: Path, res: dict, cfg, what: list[str], overrides: list[str]) -> dict:
    """Measures `what` for one saved run and rewrites its results.json; returns the new results."""
    import torch
    from transformers import AutoTokenizer

    from surgeon import compact, engine
    from surgeon import model as models
    from surgeon.eval import Evaluator
    from surgeon.model.load import dtype_of
    from surgeon.run import job_threads
    from surgeon.tracking import results

    t_start, times = time.time(), {}
    torch.set_num_threads(job_threads(cfg))
    device = engine.resolve_device(cfg.device)
    results.start_accounting(device)
    tokenizer = AutoTokenizer.from_pretrained(run / "model")  # the run saved its tokenizer beside the weights
    bos = tokenizer.bos_token_id if cfg.model.add_bos else None
    model = compact.load(run / "model", dtype=dtype_of(cfg.model.dtype))
    dense_model = cache(lambda: models.load(cfg.model)[0])  # loaded only if the dense cache misses
    evaluator = Evaluator(cfg.eval, tokenizer, bos, device)
    key = models.dense_key(cfg.model, bos)

    def timed(name, compute):
        t = time.time()
        out = compute()
        times[name] = times.get(name, 0.0) + time.time() - t
        return out

    new = {}
    if "ppl" in what:
        new["ppl_dense"] = timed("eval_dense", lambda: evaluator.dense_perplexity(dense_model, key))
        new["ppl"] = timed("eval", lambda: evaluator.perplexity(model, "pruned"))
        new["eval_protocol"] = evaluator.protocol
    if "zero_shot" in what:
        new["zero_shot_dense"] = timed("eval_dense", lambda: evaluator.dense_zero_shot(dense_model, key))
        new["zero_shot"] = timed("eval_zero_shot", lambda: evaluator.zero_shot(model))
    times["total"] = time.time() - t_start
    replaced = {k: res.get(k) for k in new}
    eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
    updated = dict(res["config"]["eval"])  # the keys of what was not measured keep describing the old figures
    if "ppl" in what:
        updated |= {k: v for k, v in eval_cfg.items() if k != "zero_shot"}
    if "zero_shot" in what:
        updated["zero_shot"] = eval_cfg["zero_shot"]
    res["config"]["eval"] = updated
    res.update(new)
    res.setdefault("reevaluations", []).append({
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "overrides": overrides, "measured": what,
        "replaced": replaced, "time_s": times, "peak_rss_mb": results.peak_rss_mb(),
        "environment": results.environment(device)})
    unsaved = results.save(res, run)
    if unsaved:
        raise unsaved
    return res


def main(argv=None) -> None:
    from surgeon.run import summary_line

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    paths, overrides = split_args(argv)
    try:
        found = check(paths, overrides)
    except SurgeonError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for run, res, cfg, what in found:
        if not what:
            print(f"{run}: its figures already follow these settings", flush=True)
            continue
        log.info("%s: measuring %s", run, " and ".join(what))
        try:
            res = evaluate(run, res, cfg, what, overrides)
        except SurgeonError as e:
            print(f"error: {run}: {e}", file=sys.stderr)
            sys.exit(2)
        print(summary_line(res), flush=True)


if __name__ == "__main__":
    main()
