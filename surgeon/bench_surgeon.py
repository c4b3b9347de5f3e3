"""`python -m surgeon.bench_surgeon` (make bench-surgeon): what one LLM Surgeon shot costs.

One shot = a K-FAC pass of the whole model over the calibration windows (forward + backward,
G and A of every prunable linear) + the global threshold + correlated updates (5% of the
weights, in chunks of whole rows of up to 500). Each point runs in its own process, so peak RSS
is its own:
- calibration tokens: SmolLM2-135M (width 576) with 2 and 8 windows of 512 tokens;
- model width: 2-layer Llama-shaped models with random weights (model=random_llama, MLP 3x
  wider) at 2,048 tokens.
Prints a table and writes outputs/bench/surgeon.json and surgeon.md.

`--solve` times the correlated update alone on one matrix at growing shapes (SmolLM2's MLP,
1024 / 2816, TinyLlama's 2048 / 5632, Qwen2.5-0.5B's down projection with 4864 inputs): a shot
removing 10% of each row, chunks of up to 500, random SPD factors (Wishart from 2,048 samples,
damped 1%), one chunk at a time (method.solve_batch=1) against batches of 64; with the loss each
reaches, 1/2 tr(dW^T G dW A), relative to the sequential one. One chunk at a time is also timed
with the inverses in LAPACK's column-major storage (`layout` "column"), as they were before
robust_cholesky_inverse_ handed them back by row. Qwen2.5-0.5B's down and gate / up projections are
also timed at 70% of each row, as later shots reach, with and without A given (`kept_set`: such
rows are solved through their kept 30%). Writes outputs/bench/surgeon_solve.{json,md}.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

COMMON = ["method=llm_surgeon", "structure=unstructured", "sparsity=0.05", "schedule.shots=1",
          "schedule.eval_every=0", "method.max_correlate=500", "logger=none", "eval.corpora=[wiki_heldout]",
          "eval.seq_len=512", "eval.max_tokens=512", "eval.cache_dense=false", "calibration.seq_len=512"]


def points():
    for n in (2, 8):
        yield f"smollm2_135m tokens={512 * n}", ["model=smollm2_135m", f"calibration.num_samples={n}"]
    for width in (256, 512, 1024):
        heads = width // 64
        yield f"llama width={width} tokens=2048", [
            "model=random_llama", "calibration.num_samples=4", f"model.width={width}", f"model.ffn={3 * width}",
            "model.layers=2", f"model.heads={heads}", f"model.kv_heads={max(1, heads // 2)}"]


SOLVE_SHAPES = [(1536, 576), (2816, 1024), (5632, 2048), (896, 4864)]  # the last: Qwen2.5-0.5B's down_proj


def solve_points(batches=(1, 64), fraction: float = 0.1, max_correlate: int = 500, deep: float = 0.7) -> list[dict]:
    import torch

    from surgeon.curvature.kron import robust_cholesky_inverse_
    from surgeon.update.correlated import correlated_update

    def spd(n, gen):
        X = torch.randn(n, 2048, generator=gen)
        F = X @ X.T / 2048
        F += 0.01 * F.diag().mean() * torch.eye(n)
        return robust_cholesky_inverse_(F), F

    def by_column(M):  # the same values in column-major storage
        return M.T.contiguous().T

    rows_out = []
    cases = [(shape, fraction, [(b, "row", True) for b in batches] + [(batches[0], "column", True)])
             for shape in SOLVE_SHAPES]
    for shape in (SOLVE_SHAPES[-1], SOLVE_SHAPES[-1][::-1]):
        cases.append((shape, deep, [(batches[0], "row", True), (batches[0], "row", False)]))
    for (R, C), frac, runs in cases:
        gen = torch.Generator().manual_seed(0)
        (Ginv, G), (Ainv, A) = spd(R, gen), spd(C, gen)
        W = torch.randn(R, C, generator=gen)
        mask = torch.rand(R, C, generator=gen).argsort(1) < int(frac * C)  # a fraction of every row
        r, c = mask.nonzero(as_tuple=True)
        losses = {}
        for b, layout, kept in runs:
            Gi, Ai = (Ginv, Ainv) if layout == "row" else (by_column(Ginv), by_column(Ainv))
            t = time.perf_counter()
            new = correlated_update(W.clone(), Gi, Ai, r, c, max_correlate, b, A if kept else None)
            seconds = time.perf_counter() - t
            dW = new - W
            losses[b, layout, kept] = 0.5 * float(((G @ dW @ A) * dW).sum())
            rows_out.append({"shape": f"{R} x {C}", "removed": int(mask.sum()), "solve_batch": b, "layout": layout,
                             "kept_set": kept, "seconds": round(seconds, 2),
                             "loss_vs_sequential": round(losses[b, layout, kept] / losses[runs[0]], 5),
                             "threads": torch.get_num_threads()})
            print(rows_out[-1], flush=True)
    return rows_out


def _table(rows) -> str:
    keys = list(rows[0])
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] +
                     ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]) + "\n"


def main(extra=None) -> None:
    extra = sys.argv[1:] if extra is None else extra
    root = Path("outputs/bench")
    if extra[:1] == ["--solve"]:
        root.mkdir(parents=True, exist_ok=True)
        rows = solve_points()
        (root / "surgeon_solve.json").write_text(json.dumps({"rows": rows}, indent=2))
        (root / "surgeon_solve.md").write_text(_table(rows))
        print(_table(rows))
        return
    rows = []
    for name, overrides in points():
        run_dir = root / "surgeon" / name.replace(" ", "_").replace("=", "")
        cmd = [sys.executable, "-m", "surgeon.run", *COMMON, *overrides, *extra, f"hydra.run.dir={run_dir}"]
        t = time.time()
        subprocess.run(cmd, check=True)
        res = json.loads((run_dir / "results.json").read_text())
        shot = res["shots"][0]
        rows.append({"point": name, "params": res["params_dense"],
                     "calibration_tokens": res["calibration"]["num_samples"] * res["calibration"]["seq_len"],
                     "curvature_s": round(shot["curvature_s"], 1), "update_s": round(shot["update_s"], 1),
                     "shot_s": round(shot["prune_s"], 1), "peak_rss_mb": round(res["peak_rss_mb"]),
                     "threads": res["threads"], "wall_s": round(time.time() - t, 1)})
    md = _table(rows)
    (root / "surgeon.json").write_text(json.dumps({"settings": COMMON + list(extra), "rows": rows}, indent=2))
    (root / "surgeon.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
