"""`python -m surgeon.bench` (make bench): time and peak memory of each method on SmolLM2-135M.

Each configuration runs in its own process so peak RSS is its own. Prints a table and writes
outputs/bench/bench.json and bench.md. Settings: calibration 32 x 512, eval 8,192 tokens of
each corpus in 512-token windows (pass extra overrides on the command line).
"""
import json
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = [("magnitude", "unstructured"), ("wanda", "unstructured"), ("sparsegpt", "unstructured"),
           ("magnitude", "nm"), ("wanda", "nm"), ("sparsegpt", "nm")]
COMMON = ["model=smollm2_135m", "logger=none", "sparsity=0.5", "calibration.num_samples=32",
          "calibration.seq_len=512", "eval.seq_len=512", "eval.max_tokens=8192"]


def main(extra=None) -> None:
    extra = sys.argv[1:] if extra is None else extra
    root = Path("outputs/bench")
    rows = []
    for method, structure in CONFIGS:
        run_dir = root / f"{method}_{structure}"
        cmd = [sys.executable, "-m", "surgeon.run", f"method={method}", f"structure={structure}",
               *COMMON, *extra, f"hydra.run.dir={run_dir}"]
        t = time.time()
        subprocess.run(cmd, check=True)
        res = json.loads((run_dir / "results.json").read_text())
        rows.append({"method": method, "structure": res["structure"], "wall_s": time.time() - t,
                     **{f"{k}_s": round(v, 1) for k, v in res["time_s"].items()},
                     "peak_rss_mb": round(res["peak_rss_mb"]), "threads": res["threads"],
                     "ppl_wiki_heldout": round(res["ppl"]["wiki_heldout"], 2)})
    keys = list(rows[0])
    md = "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] +
                   ["| " + " | ".join(f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |"
                    for r in rows])
    (root / "bench.json").write_text(json.dumps({"settings": COMMON + list(extra), "rows": rows}, indent=2))
    (root / "bench.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
