"""`python -m surgeon.bench` (make bench): prune time and peak memory of each one-shot method on
SmolLM2-135M at the standard protocol's calibration (128 x 512 Wikipedia-lead windows, seed 0).

Each configuration runs in its own process, so peak RSS is its own; perplexity is measured on the
first 16,384 tokens of held-out Wikipedia and PTB in 512-token windows (pass other overrides on the
command line). Prints a table and writes outputs/bench/bench.json and bench.md: for each run the
prune time and where it went (forward passes over the calibration windows, accumulating the
statistics inside them, the decisions: costs, masks and updates).

`--code DIR` runs the configurations with another checkout of this project (its `surgeon`
package first on the path), so an earlier commit is timed the same way in the same sitting.
`--reference DIR` also times the original SparseGPT layer loop of IST-DASLab/sparsegpt (a checkout
at DIR; its `SparseGPT` class is imported from there, nothing of it is copied) on the same windows,
threads and machine: one calibration forward per layer with all seven linears hooked (a Hessian
each), `fasterprune` on each, one recompute forward.
"""
import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = [("magnitude", "unstructured"), ("wanda", "unstructured"), ("sparsegpt", "unstructured"),
           ("magnitude", "nm"), ("wanda", "nm"), ("sparsegpt", "nm")]
COMMON = ["+experiment=smollm2_protocol", "logger=none", "sparsity=0.5", "eval.max_tokens=16384"]
SPLIT = ("forward_s", "statistics_s", "decide_s")


def run_configs(extra: list[str], root: Path, code: Path | None = None, only=None) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(code.resolve())} if code else None
    root = root.resolve()  # the runs may start in another folder (`python -m` puts it first on the path)
    rows = []
    for method, structure in CONFIGS:
        if only and f"{method}_{structure}" not in only:
            continue
        run_dir = root / f"{method}_{structure}"
        cmd = [sys.executable, "-m", "surgeon.run", f"method={method}", f"structure={structure}", *COMMON, *extra,
               f"hydra.run.dir={run_dir}", "resume=false"]
        t = time.time()
        subprocess.run(cmd, check=True, env=env, cwd=code)
        res = json.loads((run_dir / "results.json").read_text())
        shot = res["shots"][0] if res.get("shots") else {}
        rows.append({"method": method, "structure": res["structure"], "wall_s": round(time.time() - t, 1),
                     "prune_s": round(res["time_s"]["prune"], 1),
                     **{k: round(shot[k], 1) for k in SPLIT if k in shot},
                     "peak_rss_mb": round(res["peak_rss_mb"]), "threads": res["threads"],
                     **{f"ppl_{c}": round(v, 4) for c, v in res["ppl"].items()}})
    return rows


def reference(checkout: Path, structure: str, extra: list[str]) -> dict:
    """The IST-DASLab layer loop on our calibration windows and captured layer inputs."""
    import torch
    from hydra import compose, initialize_config_dir

    from surgeon import engine
    from surgeon import model as models
    from surgeon.config import CONF_DIR
    from surgeon.data.windows import calibration_windows
    from surgeon.eval import Evaluator

    torch.cuda.synchronize = lambda *a, **k: None  # the reference syncs CUDA after every linear
    sys.path.insert(0, str(checkout))
    from sparsegpt import SparseGPT  # noqa: E402  (the reference's own class, from its checkout)

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["method=sparsegpt", f"structure={structure}", *COMMON, *extra])
    model, tokenizer = models.load(cfg.model)
    adapter, cpu = models.adapter_for(model), torch.device("cpu")
    cal = cfg.calibration
    windows = calibration_windows(cal.corpus, tokenizer, int(cal.num_samples), int(cal.seq_len), int(cal.seed))
    prunen, prunem = (int(cfg.structure.n), int(cfg.structure.m)) if structure == "nm" else (0, 0)
    clock = dict.fromkeys(("capture_s", "forward_s", "fasterprune_s"), 0.0)
    t0 = time.time()
    with torch.no_grad():
        t = time.time()
        data = engine.capture(adapter, windows, cpu)
        clock["capture_s"] += time.time() - t
        inputs = data.inputs
        for i, layer in enumerate(adapter.layers()):
            gpts = {n: SparseGPT(lin) for n, lin in adapter.prunable_linears(layer).items()}
            hooks = [lin.register_forward_hook(lambda m, inp, out, n=n: gpts[n].add_batch(inp[0].data, out.data))
                     for n, lin in adapter.prunable_linears(layer).items()]
            t = time.time()
            engine.forward_layer(layer, inputs, data.layer_kwargs[i])
            clock["forward_s"] += time.time() - t
            for h in hooks:
                h.remove()
            t = time.time()
            with contextlib.redirect_stdout(io.StringIO()):  # it prints a time and an error per linear
                for g in gpts.values():
                    g.fasterprune(0.5, prunen=prunen, prunem=prunem, blocksize=int(cfg.method.blocksize),
                                  percdamp=float(cfg.curvature.damp))
                    g.free()
            clock["fasterprune_s"] += time.time() - t
            t = time.time()
            inputs = engine.forward_layer(layer, inputs, data.layer_kwargs[i])
            clock["forward_s"] += time.time() - t
    prune_s = time.time() - t0
    ppl = Evaluator(cfg.eval, tokenizer, None, cpu).perplexity(model, "reference")
    return {"method": "IST-DASLab sparsegpt loop", "structure": "2:4" if structure == "nm" else structure,
            "prune_s": round(prune_s, 1), **{k: round(v, 1) for k, v in clock.items()},
            "threads": torch.get_num_threads(), **{f"ppl_{c}": round(v, 4) for c, v in ppl.items()}}


def table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] +
                     ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, help="a checkout of github.com/IST-DASLab/sparsegpt")
    ap.add_argument("--code", type=Path, help="run the configurations with this checkout of the project")
    ap.add_argument("--only", nargs="*", help="method_structure names to run (default: all)")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args, extra = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    rows = run_configs(extra, args.out, args.code, args.only)
    if args.reference:
        rows += [reference(args.reference, s, extra) for s in ("unstructured", "nm")]
    import torch

    from surgeon.tracking.results import environment

    md = table(rows)
    (args.out / "bench.json").write_text(json.dumps({"settings": COMMON + list(extra), "rows": rows,
                                                     "environment": environment(torch.device("cpu"))}, indent=2))
    (args.out / "bench.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
