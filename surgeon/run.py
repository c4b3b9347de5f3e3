"""Entry point: `python -m surgeon.run [group=option ...] [key=value ...]` (Hydra; -m for sweeps).

check config -> load model -> dense perplexity (cached) -> calibrate + prune (schedule) ->
measure sparsity -> pruned perplexity -> save -> results.json + W&B -> one-line summary.
"""
import logging
import os
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from surgeon import config as config_checks
from surgeon import structure as structures
from surgeon.errors import SurgeonError

log = logging.getLogger("surgeon")


def _threads(cfg) -> int:
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


def execute(cfg: DictConfig, out_dir: Path) -> dict:
    from surgeon import engine, schedule
    from surgeon import eval as evaluation
    from surgeon import model as models
    from surgeon.data.windows import calibration_windows
    from surgeon.method import TRAINED, Method
    from surgeon.tracking import results, wandb_logger

    t_start = time.time()
    config_checks.check(cfg)  # fails fast, before any model is loaded
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(_threads(cfg))
    device = engine.resolve_device(cfg.device)
    structure = structures.build(cfg.structure)
    trained = TRAINED.get(cfg.method.name)  # learns its masks by training (Compresso)
    method = None if trained else Method(cfg.method, cfg.curvature, structure)
    target = structure.target(float(cfg.sparsity))

    model, tokenizer = models.load(cfg.model)
    adapter = models.adapter_for(model)
    for layer in adapter.layers():
        for lin in adapter.prunable_linears(layer).values():
            structure.check(lin.in_features)
    bos = tokenizer.bos_token_id if cfg.model.add_bos else None
    logger = wandb_logger.build(cfg.logger, cfg, out_dir)
    times = {}

    t = time.time()
    eval_windows = evaluation.build_windows(cfg.eval, tokenizer, bos)
    protocol = evaluation.protocol(cfg.eval, eval_windows)

    def measure(tag: str, windows_by_corpus: dict = eval_windows, prefix=None) -> dict:
        model.to(device)  # the whole model for evaluation; pruning moves one layer at a time
        ppl = evaluation.evaluate(model, windows_by_corpus, device, cfg.eval.batch_size,
                                  lambda m: log.info("%s %s", tag, m), prefix, bos is not None)
        model.to("cpu")
        return ppl

    model_key = {"model": cfg.model.name, "dtype": cfg.model.dtype, "bos": bos}
    key = {**model_key, **{k: v for k, v in protocol.items() if k != "windows"}}
    ppl_dense = evaluation.dense_cached(key, lambda: measure("dense")) if cfg.eval.cache_dense else measure("dense")
    zs_cfg = cfg.eval.get("zero_shot")
    zs_on = bool(zs_cfg and zs_cfg.tasks)

    def zero_shot_eval() -> dict:
        return evaluation.zero_shot.evaluate(model, tokenizer, zs_cfg, device, bos is not None)

    zs_dense = None
    if zs_on:
        zs_key = {**model_key, **OmegaConf.to_container(zs_cfg, resolve=True)}
        zs_dense = (evaluation.dense_cached(zs_key, zero_shot_eval, "dense_zero_shot") if cfg.eval.cache_dense
                    else zero_shot_eval())
    times["eval_dense"] = time.time() - t
    params_dense = adapter.prunable_parameters()

    t = time.time()
    windows = None
    if method is not None and method.needs_data:
        windows = calibration_windows(cfg.calibration.corpus, tokenizer, int(cfg.calibration.num_samples),
                                      int(cfg.calibration.seq_len), int(cfg.calibration.seed), bos)
    times["calibration_data"] = time.time() - t

    t = time.time()
    log.info("pruning %s with %s (%s, %s) to %.0f%%", cfg.model.name, cfg.method.name,
             cfg.curvature.name, cfg.structure.name, 100 * target)
    shots, training = [], None

    def on_shot(t: int, shot_target: float, timings: dict) -> None:
        entry = {"shot": t, "target_sparsity": shot_target,
                 "achieved_sparsity": 1 - adapter.nonzero_prunable_parameters() / params_dense, **timings}
        every, cap = int(cfg.schedule.get("eval_every", 0)), cfg.schedule.get("eval_max_tokens")
        if every and (t % every == 0 or t == int(cfg.schedule.shots)):
            entry["ppl"] = measure(f"shot {t}", {c: w if cap is None else w[: max(1, int(cap) // w.shape[1])]
                                                 for c, w in eval_windows.items()})
            entry["full_eval"] = cap is None  # the table-grade protocol: tables show this size too
        shots.append(entry)
        logger.log({"shot": t, "shot_sparsity": entry["achieved_sparsity"],
                    **{f"shot_ppl/{k}": v for k, v in entry.get("ppl", {}).items()}})
        log.info("shot %d: sparsity %.3f", t, entry["achieved_sparsity"])

    if trained:
        records, training = trained.run(adapter, tokenizer, cfg, device, logger)
    else:
        records = schedule.get(cfg.schedule.name).run(adapter, windows, method, target, device, cfg=cfg,
                                                      on_shot=on_shot)
    times["prune"] = time.time() - t  # includes the calibration forward passes, layer by layer

    params_pruned = adapter.nonzero_prunable_parameters()
    achieved = 1 - params_pruned / params_dense

    t = time.time()
    last = shots[-1] if shots else {}
    ppl = last["ppl"] if last.get("full_eval") and last["shot"] == len(shots) else measure("pruned")
    ppl_prompt = None
    if trained and cfg.method.prompt.eval:  # the collaborative prompt read before every window
        from surgeon.data.instructions import prompt_ids

        ppl_prompt = measure("pruned, with prompt", prefix=prompt_ids(tokenizer, cfg.method.prompt.text, bos))
    times["eval"] = time.time() - t
    zs = None
    if zs_on:
        t = time.time()
        zs = zero_shot_eval()
        times["eval_zero_shot"] = time.time() - t

    compaction = None
    if cfg.compact is True or (cfg.compact == "auto" and cfg.structure.name == "heads_neurons"):
        t = time.time()
        compaction = compact_and_measure(model, tokenizer, eval_windows, device, cfg, out_dir)
        times["compact"] = time.time() - t
    elif cfg.save:
        save_dir = out_dir / "model"
        model.save_pretrained(save_dir)
        tokenizer.save_pretrained(save_dir)
    times["total"] = time.time() - t_start

    res = {
        "model": cfg.model.name, "method": cfg.method.name, "curvature": cfg.curvature.name,
        "structure": _structure_name(cfg.structure), "schedule": cfg.schedule.name, "seed": int(cfg.seed),
        "target_sparsity": target, "achieved_sparsity": achieved,
        "params_dense": params_dense, "params_pruned": params_pruned,
        "ppl_dense": ppl_dense, "ppl": ppl, "ppl_prompt": ppl_prompt, "eval_protocol": protocol,
        "zero_shot_dense": zs_dense, "zero_shot": zs,
        "calibration": None if windows is None else {  # None: the method used no data
            "corpus": cfg.calibration.corpus, "num_samples": int(cfg.calibration.num_samples),
            "seq_len": int(cfg.calibration.seq_len)},
        "time_s": times, "peak_rss_mb": results.peak_rss_mb(), "device": str(device),
        "threads": torch.get_num_threads(), "shots": shots, "layers": records, "training": training,
        "compaction": compaction,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    results.write_json_atomic(out_dir / "results.json", res)
    logger.summary({k: v for k, v in res.items() if k not in ("layers", "config")})
    logger.log({**{f"ppl/{k}": v for k, v in ppl.items()}, "achieved_sparsity": achieved,
                **({f"zero_shot/{k}": v for k, v in zs["primary"].items()} | {"zero_shot/mean": zs["mean"]} if zs else {})})
    logger.finish()
    print(summary_line(res), flush=True)
    return res


def compact_and_measure(model, tokenizer, eval_windows, device, cfg, out_dir: Path) -> dict:
    """Shrinks the pruned model's shapes (surgeon/compact.py) and records what that buys:
    parameters, safetensors size and generation latency before (dense shapes) and after, and
    the largest logit difference between the compacted and the masked model."""
    import tempfile

    from surgeon import compact
    from surgeon.eval.latency import ms_per_token

    lat = dict(cfg.latency)
    probe = next(iter(eval_windows.values()))[:1, :128]
    with torch.no_grad():
        masked = model(probe).logits
    before = {"params": compact.parameter_count(model), "ms_per_token": ms_per_token(model, device, **lat)}
    with tempfile.TemporaryDirectory() as tmp:
        before["file_bytes"] = compact.save(model, None, tmp)
    shapes = compact.compact(model)
    with torch.no_grad():
        diff = (model(probe).logits - masked).abs().max().item()
    after = {"params": compact.parameter_count(model), "ms_per_token": ms_per_token(model, device, **lat)}
    if cfg.save:
        after["file_bytes"] = compact.save(model, tokenizer, out_dir / "model")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            after["file_bytes"] = compact.save(model, None, tmp)
    log.info("compacted: %d -> %d parameters, %.1f -> %.1f ms/token, max logit diff %.2e", before["params"],
             after["params"], before["ms_per_token"], after["ms_per_token"], diff)
    return {"before": before, "after": after, "max_logit_diff": diff, "layer_shapes": shapes,
            "native_transformers": bool(model.config.surgeon_native), "latency": lat}


def _structure_name(cfg) -> str:
    return f"{cfg.n}:{cfg.m}" if cfg.name == "nm" else cfg.name


def summary_line(res: dict) -> str:
    ppl = ", ".join(f"{k} {res['ppl_dense'][k]:.2f} -> {v:.2f}" for k, v in res["ppl"].items())
    if res.get("zero_shot"):
        ppl += f" | zero-shot mean {res['zero_shot_dense']['mean']:.3f} -> {res['zero_shot']['mean']:.3f}"
    return (f"[surgeon] {res['model']} {res['method']} {res['structure']} "
            f"sparsity {res['achieved_sparsity']:.3f} (target {res['target_sparsity']:.3f}) | ppl {ppl} | "
            f"{res['time_s']['total']:.0f}s, peak {res['peak_rss_mb']:.0f} MB")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> float | None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    done = out_dir / "results.json"
    if cfg.resume and done.exists():  # written atomically, so it exists only for finished runs
        print(f"[surgeon] {out_dir} already has results.json: skipped (resume=false reruns it)")
        return None
    try:
        res = execute(cfg, out_dir)
    except SurgeonError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        if HydraConfig.get().mode.name == "MULTIRUN":
            return None  # one bad job must not take the sweep down
        sys.exit(2)
    return next(iter(res["ppl"].values()))


def main() -> None:
    try:
        config_checks.check_overrides(sys.argv[1:])
    except SurgeonError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    app()


if __name__ == "__main__":
    main()
