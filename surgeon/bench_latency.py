"""`python -m surgeon.bench_latency DIR [DIR ...] [--out FILE]` (make bench-latency): CPU (or GPU)
generation latency of the compacted shapes that runs recorded, side by side in one sitting.

A run's own `compaction.ms_per_token` is timed once, right after pruning, with whatever else the
machine was doing; comparing runs needs them timed together. For every results.json with a
compaction under the folders, the model is rebuilt at the recorded shapes - its config, the
decoder layers depth pruning removed dropped, each kept layer resized to its recorded heads and
FFN width - with random weights (latency does not depend on their values), and all models, the
dense one first, are timed in rounds (each round times every model once, so drift of the
machine spreads over all of them). Prints a table and writes JSON.
"""
import argparse
import json
import statistics
from pathlib import Path

import torch


def shaped_model(r: dict):
    """The dense model of run `r` at the shapes its compaction recorded (random weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from surgeon.model.adapters import adapter_for
    from surgeon.compact import reshape
    from surgeon.config import model_config
    from surgeon.model.load import _dequantized_folder

    config = AutoConfig.from_pretrained(_dequantized_folder(model_config(r["model"])))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    adapter = adapter_for(model)
    if not r.get("compaction"):
        return model
    removed = {x["layer"] for x in r["layers"] if x.get("layer_removed")}
    keep = [i for i in range(len(adapter.layers())) if i not in removed]
    if removed:
        adapter.drop_layers(keep)
    reshape(adapter, r["compaction"]["layer_shapes"])
    return model


def main(argv=None) -> None:
    from surgeon.eval.latency import prefill_decode_ms

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("outputs/bench/latency.json"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    runs = [json.loads(p.read_text()) for d in args.dirs for p in sorted(d.rglob("results.json"))]
    runs = [r for r in runs if r.get("compaction")]
    if not runs:
        raise SystemExit(f"no results.json with a compaction under {', '.join(map(str, args.dirs))}")
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = [("dense", None, shaped_model({**runs[0], "compaction": None}))]
    models += [(f"{r['method']} {r['structure']} {100 * r['target_sparsity']:.0f}%", r, shaped_model(r)) for r in runs]
    times = {name: [] for name, _, _ in models}
    for _ in range(args.rounds):
        for name, _, model in models:
            times[name].append(prefill_decode_ms(model, device, args.prompt_tokens, args.new_tokens, 1))
    rows = []
    for name, r, model in models:
        t = times[name]
        rows.append({"model": name, "params": sum(p.numel() for p in model.parameters()),
                     "layers": len(model.model.layers),
                     "prefill_ms": statistics.median(x["prefill_ms"] for x in t),
                     "decode_ms_per_token": statistics.median(x["decode_ms_per_token"] for x in t),
                     "ms_per_token": statistics.median(x["ms_per_token"] for x in t),
                     "ppl": None if r is None else r["ppl"]})
    base = rows[0]["ms_per_token"]
    print(f"| model | params | layers | prefill ms ({args.prompt_tokens} tokens) | decode ms/token | ms/token | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for x in rows:
        print(f"| {x['model']} | {x['params']:,} | {x['layers']} | {x['prefill_ms']:.1f} | {x['decode_ms_per_token']:.1f} | "
              f"{x['ms_per_token']:.1f} | x{base / x['ms_per_token']:.2f} |")
    from surgeon.tracking.results import environment

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "rounds": args.rounds, "prompt_tokens": args.prompt_tokens,
                                    "new_tokens": args.new_tokens, "environment": environment(device)}, indent=1))
    print(args.out)


if __name__ == "__main__":
    main()
