"""Entry point: `python -m surgeon.run [group=option ...] [key=value ...]` (Hydra; -m for sweeps).

plan (every option checked) -> load the model -> dense perplexity (cached) -> calibration windows
-> prune (the schedule's shots of the method) -> recovery (if any) -> pruned perplexity -> compact or save ->
results.json + W&B -> a one-line summary.
"""
import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from surgeon import config as config_checks
from surgeon.errors import SurgeonError

log = logging.getLogger("surgeon")


def job_threads(cfg) -> int:
    """All cores for one job; parallel sweep jobs (joblib) split them instead of oversubscribing."""
    if cfg.threads:
        return int(cfg.threads)
    cores = os.cpu_count() or 1
    try:
        launcher = HydraConfig.get().launcher
        if "joblib" in str(launcher.get("_target_", "")):
            jobs = int(launcher.n_jobs)
            return max(1, cores // (cores if jobs < 1 else jobs))
    except ValueError:  # no Hydra context (called from Python)
        pass
    return cores


def execute(cfg: DictConfig, out_dir: Path, plan=None) -> dict:
    import torch

    from surgeon import engine, estimate
    from surgeon import model as models
    from surgeon import plan as plans
    from surgeon.context import Context
    from surgeon.data.windows import calibration_windows
    from surgeon.eval import Evaluator
    from surgeon.tracking import results, wandb_logger

    t_start, times = time.time(), {}
    plan = plan or plans.build(cfg)  # every option checked, before any model is loaded
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(job_threads(cfg))
    device = engine.resolve_device(cfg.device)
    results.start_accounting(device)

    model, tokenizer = models.load(cfg.model)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    adapter = models.adapter_for(model)
    plan.structure.check(adapter)
    bos = tokenizer.bos_token_id if cfg.model.add_bos else None
    logger = wandb_logger.build(cfg.logger, cfg, out_dir)

    t = time.time()
    evaluator = Evaluator(cfg.eval, tokenizer, bos, device)
    estimate.warn(adapter, cfg, plan, device, sum(evaluator.protocol["tokens"].values()))
    ppl_dense, zs_dense = evaluator.dense(lambda: model, models.dense_key(cfg.model, bos))
    times["eval_dense"] = time.time() - t
    params_dense = adapter.prunable_parameters()

    t = time.time()
    cal = cfg.calibration
    windows = (calibration_windows(cal.corpus, tokenizer, int(cal.num_samples), int(cal.seq_len), int(cal.seed), bos)
               if plan.needs_data else None)
    times["calibration_data"] = time.time() - t

    t = time.time()
    log.info("pruning %s with %s (%s, %s) to %.0f%%", cfg.model.name, cfg.method.name, cfg.curvature.name,
             plan.structure.label, 100 * plan.target)
    ctx = Context(adapter, tokenizer, windows, device, int(cfg.seed), bos, logger, evaluator)
    records, shots = plan.schedule.run(plan.method, ctx, plan.target, plan.layer_sparsity)
    times["prune"] = time.time() - t  # includes the calibration forward passes, layer by layer
    recovered = None
    if cfg.recovery.name != "none":
        from surgeon.recovery import recover

        t = time.time()
        recovered = recover(cfg.recovery, ctx, cfg.calibration)
        times["recovery"] = time.time() - t
    model = adapter.model  # a trained method may have replaced it (merged adapters)
    params_pruned = adapter.nonzero_prunable_parameters()

    t = time.time()
    last = shots[-1] if shots else {}
    reuse = last.get("full_eval") and last["shot"] == len(shots) and recovered is None
    ppl = last["ppl"] if reuse else evaluator.perplexity(model, "pruned")
    extra_eval = plan.method.evaluate(ctx)
    times["eval"] = time.time() - t
    zs = None
    if evaluator.zero_shot_on:
        t = time.time()
        zs = evaluator.zero_shot(model)
        times["eval_zero_shot"] = time.time() - t

    compaction = None
    if plan.compact:
        t = time.time()
        compaction = compact_and_measure(model, tokenizer, evaluator, device, cfg, out_dir)
        times["compact"] = time.time() - t
    elif cfg.save:
        from surgeon import compact

        compact.save(model, tokenizer, out_dir / "model")
    speed = None
    if plan.semi_structured:  # last: it converts the model in place
        from surgeon.eval import semi_structured

        t = time.time()
        probe = next(iter(evaluator.windows.values()))[:1, :128]
        speed = semi_structured.measure(adapter, device, dict(cfg.latency), probe)
        times["semi_structured"] = time.time() - t
    times["total"] = time.time() - t_start

    res = results.record(plan, {
        "achieved_sparsity": 1 - params_pruned / params_dense,
        "params_dense": params_dense, "params_pruned": params_pruned,
        "ppl_dense": ppl_dense, "ppl": ppl, "ppl_prompt": None, "eval_protocol": evaluator.protocol,
        "zero_shot_dense": zs_dense, "zero_shot": zs,
        "calibration": None if windows is None else {  # None: the method used no data
            "corpus": cal.corpus, "num_samples": int(cal.num_samples), "seq_len": int(cal.seq_len)},
        "time_s": times, "memory": results.memory(model_bytes, device),
        "shots": shots, "layers": records, "training": None, "compaction": compaction, "recovery": recovered,
        "semi_structured": speed,
        **extra_eval, **plan.method.report()}, device)
    unsaved = results.save(res, out_dir)  # None, or the error naming where the results went instead
    logger.summary({k: v for k, v in res.items() if k not in ("layers", "config")})
    logger.log({**{f"ppl/{k}": v for k, v in ppl.items()}, "achieved_sparsity": res["achieved_sparsity"],
                **({f"zero_shot/{k}": v for k, v in zs["primary"].items()} | {"zero_shot/mean": zs["mean"]} if zs else {})})
    logger.finish()
    print(summary_line(res), flush=True)
    if unsaved:
        raise unsaved
    return res


def compact_and_measure(model, tokenizer, evaluator, device, cfg, out_dir: Path) -> dict:
    """Shrinks the pruned model's shapes (surgeon/compact.py) and records what that buys:
    parameters, safetensors size and generation latency before (dense shapes) and after, and
    the largest logit difference between the compacted and the masked model (and, when saved,
    between the model reloaded from its folder and the masked model)."""
    import tempfile

    import torch

    from surgeon import compact
    from surgeon.eval.latency import ms_per_token

    lat = dict(cfg.latency)
    probe = next(iter(evaluator.windows.values()))[:1, :128]
    with torch.no_grad():
        masked = model(probe).logits
    before = {"params": compact.parameter_count(model), "ms_per_token": ms_per_token(model, device, **lat)}
    with tempfile.TemporaryDirectory() as tmp:
        before["file_bytes"] = compact.save(model, None, tmp)
    shapes = compact.compact(model)
    with torch.no_grad():
        diff = (model(probe).logits - masked).abs().max().item()
    after = {"params": compact.parameter_count(model), "ms_per_token": ms_per_token(model, device, **lat)}
    reload = None
    if cfg.save:
        after["file_bytes"] = compact.save(model, tokenizer, out_dir / "model")
        reloaded = compact.load(out_dir / "model", dtype=next(model.parameters()).dtype).to(probe.device)
        with torch.no_grad():  # what a user gets back from the folder, against the masked model
            reload = {"loader": "from_pretrained" if model.config.surgeon_native else "surgeon.compact.load",
                      "max_logit_diff": (reloaded(probe).logits - masked).abs().max().item()}
        del reloaded
    else:
        with tempfile.TemporaryDirectory() as tmp:
            after["file_bytes"] = compact.save(model, None, tmp)
    log.info("compacted: %d -> %d parameters, %.1f -> %.1f ms/token, max logit diff %.2e", before["params"],
             after["params"], before["ms_per_token"], after["ms_per_token"], diff)
    return {"before": before, "after": after, "max_logit_diff": diff, "reload": reload, "layer_shapes": shapes,
            "native_transformers": bool(model.config.surgeon_native), "latency": lat}


def summary_line(res: dict) -> str:
    ppl = ", ".join(f"{k} {res['ppl_dense'][k]:.2f} -> {v:.2f}" for k, v in res["ppl"].items())
    if res.get("zero_shot"):
        ppl += f" | zero-shot mean {res['zero_shot_dense']['mean']:.3f} -> {res['zero_shot']['mean']:.3f}"
    return (f"[surgeon] {res['model']} {res['method']} {res['structure']} "
            f"sparsity {res['achieved_sparsity']:.3f} (target {res['target_sparsity']:.3f}) | ppl {ppl} | "
            f"{res['time_s']['total']:.0f}s, peak {res['peak_rss_mb']:.0f} MB")


def report(error: Exception) -> str:
    """A known failure as one line: on stderr, and in the run's log file (run.log)."""
    line = f"error: {error}"
    if isinstance(error, OSError):
        line = f"error: {error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    print(line, file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.emit(logging.LogRecord("surgeon", logging.ERROR, __file__, 0, line, None, None))
    return line


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> dict:
    """One job: claim its folder (surgeon/tracking/run_dir.py), run it, report how it ended
    (a sweep's summary reads the returned status)."""
    from surgeon import plan as plans
    from surgeon.tracking import run_dir

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    try:
        plan = plans.build(cfg)  # a bad option fails here, before the folder is touched
        with run_dir.claim(out_dir, cfg, hc) as held:
            if held.skip:
                print(f"[surgeon] {out_dir} already holds this run's results.json: skipped "
                      "(resume=false runs it again)", flush=True)
                return {"status": "skipped"}
            res = execute(cfg, out_dir, plan)
    except (SurgeonError, OSError) as e:
        line = report(e)
        if hc.mode.name == "MULTIRUN":
            return {"status": "failed", "error": line}  # one bad job must not take the sweep down
        sys.exit(2)
    return {"status": "done", "ppl": res["ppl"]}


def main() -> None:
    try:
        config_checks.check_overrides(sys.argv[1:])
        config_checks.check_composes(sys.argv[1:])
        config_checks.check_output(sys.argv[1:])
    except SurgeonError as e:
        report(e)
        sys.exit(2)
    app()


if __name__ == "__main__":
    main()
