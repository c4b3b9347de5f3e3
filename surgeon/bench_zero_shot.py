"""`python -m surgeon.bench_zero_shot [--model M] [--limit N]` (make bench-zero-shot): zero-shot evaluation with the
head applied only at the scored positions (`surgeon/eval/zero_shot.py`, `tail_lm`) against the harness's own
full-logits call, side by side in one sitting on one loaded dense model.

Each round times both on the eight standard tasks (the first N documents each; the task files are built before
the clock starts), alternating which goes first. The figures must agree: every task's metrics are compared and
the largest difference is reported (it is zero unless two choices tie to the last float bit). Prints the table
and writes outputs/bench/zero_shot_<model>.json.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from surgeon.eval import zero_shot
from surgeon.tracking.results import environment, write_json_atomic


def main(argv=None) -> None:
    from surgeon import model as models
    from surgeon.config import model_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m", help="a model config name (conf/model/)")
    ap.add_argument("--limit", type=int, default=20, help="documents per task")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    mcfg = model_config(args.model)
    model, tok = models.load(mcfg)
    cfg = OmegaConf.create({"tasks": list(zero_shot.STANDARD), "source": "local", "limit": args.limit,
                            "metric": "acc_norm", "batch_size": args.batch_size, "bootstrap_iters": 100})
    zero_shot.local_tasks(cfg.tasks)
    device, times, results = torch.device("cpu"), {"scored": [], "full": []}, {}
    for r in range(args.rounds):
        for kind in (("full", "scored") if r % 2 == 0 else ("scored", "full")):
            t = time.time()
            results[kind] = zero_shot.evaluate(model, tok, cfg, device, bool(mcfg.add_bos), scored_head=kind == "scored")
            times[kind].append(time.time() - t)
    diff = max(abs(results["scored"]["tasks"][t][m] - v) for t, ms in results["full"]["tasks"].items()
               for m, v in ms.items() if not m.endswith("_stderr"))
    out = {"model": args.model, "limit": args.limit, "rounds": args.rounds, "batch_size": results["full"]["batch_size"],
           "seconds": {k: statistics.median(v) for k, v in times.items()}, "all_seconds": times,
           "speedup": statistics.median(times["full"]) / statistics.median(times["scored"]),
           "max_metric_difference": diff, "mean": {k: results[k]["mean"] for k in results},
           "environment": environment(device)}
    path = args.out or Path("outputs/bench") / f"zero_shot_{args.model}.json"
    write_json_atomic(path, out)
    print(f"| {args.model}, limit {args.limit} | full logits s | scored positions s | speedup | max metric diff |")
    print("|---|---:|---:|---:|---:|")
    print(f"| batch {out['batch_size']} | {out['seconds']['full']:.1f} | {out['seconds']['scored']:.1f} | "
          f"x{out['speedup']:.2f} | {diff:.2g} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
