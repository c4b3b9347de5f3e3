"""`python -m surgeon.bench_scale` (make bench-scale): what pruning costs as models grow, measured
on Llama-shaped models with random weights built from config (no hub), and extrapolated.

Widths: SmolLM2's (576 / 1536, GQA 9/3), 1024 / 2816 (16/4) and TinyLlama-1.1B's (2048 / 5632,
GQA 32/4), two decoder layers each (costs are per layer; the embeddings are the real vocabulary's).
Methods: SparseGPT, Wanda, SlimGPT (30%) and one LLM Surgeon shot (5%, chunks of 500), on 8 x 512
calibration tokens (and 16 x 512 at the smallest width, for the growth with tokens). Each point
runs in its own process. Per point: seconds per layer for the statistics (forward passes, and
their accumulation; the whole gradient pass for LLM Surgeon) and for the decisions (costs, masks,
updates), peak host memory, and the peak bytes of parameters on the compute device at once.

Then per method and phase a power law t = a * width^b is fitted, and the time of a whole model is
extrapolated to Llama-2-7B (32 layers, width 4096, 128 x 2048 calibration tokens) and Llama-2-70B
(80 layers, width 8192), and from this CPU to one H100 by the ratio of matrix rates: the rate
measured here (float32 matmul) against an assumed H100 float32 rate (ASSUMED_GPU_FLOPS). A
loose bound: loops of small kernels (SparseGPT's column sweep) do not speed up that much.
Writes experiments/scale/scale.{json,md,png}.
"""
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

WIDTHS = [(576, 1536, 9, 3), (1024, 2816, 16, 4), (2048, 5632, 32, 4)]
METHODS = {"sparsegpt": ["method=sparsegpt", "sparsity=0.5"], "wanda": ["method=wanda", "sparsity=0.5"],
           "slimgpt": ["method=slimgpt", "sparsity=0.3", "schedule.curve=uniform"],
           "llm_surgeon": ["method=llm_surgeon", "sparsity=0.05", "schedule.shots=1", "method.max_correlate=500"]}
COMMON = ["model=random_llama", "model.layers=2", "logger=none", "calibration.seq_len=512", "eval.seq_len=512",
          "eval.max_tokens=1024", "eval.corpora=[wiki_heldout]", "eval.cache_dense=false", "schedule.eval_every=0",
          "latency.repeats=1", "latency.new_tokens=2", "resume=false"]
ASSUMED_GPU_FLOPS = 60e12  # H100 SXM float32, non-tensor-core (datasheet: 67 TFLOP/s)
TARGETS = {"llama2_7b": (4096, 32, 128 * 2048), "llama2_70b": (8192, 80, 128 * 2048)}


def cpu_flops() -> float:
    """The float32 matmul rate of this machine (2048^3, best of 3)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 2048 ** 3 / best


def point(root: Path, method: str, width: int, ffn: int, heads: int, kv: int, samples: int) -> dict:
    run_dir = (root / f"{method}_w{width}_n{samples}").resolve()
    cmd = [sys.executable, "-m", "surgeon.run", *COMMON, *METHODS[method], f"model.width={width}",
           f"model.ffn={ffn}", f"model.heads={heads}", f"model.kv_heads={kv}", f"calibration.num_samples={samples}",
           f"hydra.run.dir={run_dir}"]
    subprocess.run(cmd, check=True)
    res = json.loads((run_dir / "results.json").read_text())
    shot, layers = res["shots"][0], 2
    if "curvature_s" in shot:  # whole-model passes: gradients, then all decisions
        stats, decide = shot["curvature_s"], shot["update_s"]
    else:
        stats, decide = shot["forward_s"], shot["decide_s"]
    return {"method": method, "width": width, "ffn": ffn, "tokens": samples * 512,
            "stats_s_per_layer": stats / layers, "decide_s_per_layer": decide / layers,
            "peak_rss_mb": res["peak_rss_mb"], "peak_device_param_mb": res["memory"]["peak_device_param_bytes"] / 2**20,
            "model_param_mb": res["memory"]["model_param_bytes"] / 2**20, "threads": res["threads"]}


def fit(rows: list[dict], key: str) -> tuple[float, float]:
    """Least-squares power law t = a * width^b over the widths."""
    xs = [math.log(r["width"]) for r in rows]
    ys = [math.log(max(r[key], 1e-6)) for r in rows]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - b * mx), b


def main(argv=None) -> None:
    out = Path("experiments/scale")
    root = Path("outputs/bench/scale")
    rows = []
    for method in METHODS:
        for width, ffn, heads, kv in WIDTHS:
            rows.append(point(root, method, width, ffn, heads, kv, 8))
        rows.append(point(root, method, *WIDTHS[0], 16))
    rate = cpu_flops()
    fits, extrapolated = {}, {}
    for method in METHODS:
        by_width = [r for r in rows if r["method"] == method and r["tokens"] == 8 * 512]
        two = [r for r in rows if r["method"] == method and r["width"] == WIDTHS[0][0]]
        token_growth = two[1]["stats_s_per_layer"] / two[0]["stats_s_per_layer"]  # 2x the tokens
        fits[method] = {"stats": fit(by_width, "stats_s_per_layer"), "decide": fit(by_width, "decide_s_per_layer"),
                        "stats_growth_at_2x_tokens": token_growth}
        for name, (width, layers, tokens) in TARGETS.items():
            (a_s, b_s), (a_d, b_d) = fits[method]["stats"], fits[method]["decide"]
            stats = a_s * width ** b_s * tokens / (8 * 512)  # statistics grow linearly with tokens
            cpu = layers * (stats + a_d * width ** b_d)
            extrapolated.setdefault(method, {})[name] = {"cpu_h": cpu / 3600, "h100_min": cpu * rate / ASSUMED_GPU_FLOPS / 60}
    report = {"rows": rows, "fits": fits, "extrapolated": extrapolated, "cpu_flops": rate,
              "assumed_gpu_flops": ASSUMED_GPU_FLOPS, "command": "make bench-scale"}
    out.mkdir(parents=True, exist_ok=True)
    from surgeon.tracking.results import environment

    report["environment"] = environment(torch.device("cpu"))
    (out / "scale.json").write_text(json.dumps(report, indent=1))
    keys = list(rows[0])
    md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    md += ["| " + " | ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |" for r in rows]
    md += ["", f"CPU float32 matmul rate {rate / 1e9:.0f} GFLOP/s; assumed H100 {ASSUMED_GPU_FLOPS / 1e12:.0f} TFLOP/s.", "",
           "| method | statistics ~ width^b | decisions ~ width^b | statistics at 2x tokens | 7B: CPU h / H100 min | 70B: CPU h / H100 min |",
           "|---|---:|---:|---:|---:|---:|"]
    for method, f in fits.items():
        e = extrapolated[method]
        md.append(f"| {method} | {f['stats'][1]:.2f} | {f['decide'][1]:.2f} | {f['stats_growth_at_2x_tokens']:.2f}x | "
                  f"{e['llama2_7b']['cpu_h']:.1f} / {e['llama2_7b']['h100_min']:.1f} | "
                  f"{e['llama2_70b']['cpu_h']:.1f} / {e['llama2_70b']['h100_min']:.1f} |")
    (out / "scale.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    plot(rows, fits, out / "scale.png")


def plot(rows, fits, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for ax, (phase, title) in zip(axes, (("stats", "statistics"), ("decide", "decisions"))):
        for method in fits:
            pts = sorted((r["width"], r[f"{phase}_s_per_layer"]) for r in rows
                         if r["method"] == method and r["tokens"] == 8 * 512)
            ax.loglog(*zip(*pts), "o-", label=f"{method} (width^{fits[method][phase][1]:.1f})")
        ax.set_xlabel("model width")
        ax.set_ylabel("seconds per layer (2 CPU cores)")
        ax.set_title(f"{title}, 4,096 calibration tokens", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)


if __name__ == "__main__":
    main()
