"""Golden outputs: every method x structure x schedule combination run end to end on tiny models
built in code, fingerprinted by the masks and weights it saves.

The fingerprints in golden_prune.json were recorded before the pruning step was redesigned; the
test (test_golden.py) reruns every case through `surgeon.run.execute` and compares. Masks must be
identical, weights and perplexities equal to 1e-4 relative (other CPUs order float sums
differently). Record anew (only after a change that is meant to move results, and say why in the
commit):

    python -m tests.golden --record [case ...]
"""
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

GOLDEN = Path(__file__).with_name("golden_prune.json")
ALPACA = [{"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} plus {b} is {a + b}."}
          for a in range(12) for b in range(12)]
QUICK = ["logger=none", "calibration.num_samples=4", "calibration.seq_len=64", "eval.seq_len=64",
         "eval.max_tokens=128", "eval.corpora=[wiki_heldout]", "eval.cache_dense=false", "save=true",
         "latency.new_tokens=2", "latency.repeats=1", "latency.prompt_tokens=8"]
SHOTS = ["schedule.shots=2", "schedule.eval_every=0"]
UNCOUPLED = ["structure.coupled=false"]  # rows_cols as recorded: no channel freed (tests/test_structure.py covers coupling)
SURGEON = ["method=llm_surgeon", "method.max_correlate=64", *SHOTS]

CASES = {
    "magnitude_unstructured": ["method=magnitude"],
    "magnitude_nm": ["method=magnitude", "structure=nm"],
    "magnitude_rows_cols": ["method=magnitude", "structure=rows_cols", *UNCOUPLED, "sparsity=0.3"],
    "magnitude_heads_neurons": ["method=magnitude", "structure=heads_neurons", "sparsity=0.4"],
    "wanda_unstructured": ["method=wanda"],
    "wanda_nm48": ["method=wanda", "structure=nm", "structure.n=4", "structure.m=8"],
    "wanda_heads_neurons": ["method=wanda", "structure=heads_neurons", "sparsity=0.4"],
    "sparsegpt_unstructured": ["method=sparsegpt", "method.blocksize=32"],
    "sparsegpt_nm": ["method=sparsegpt", "structure=nm", "method.blocksize=32"],
    "sparsegpt_ratio": ["method=sparsegpt", "schedule=incremental_ratio", "sparsity=0.4"],
    "obd_unstructured": ["method=sparsegpt", "curvature=diagonal", "method.blocksize=32"],
    "l_obd_unstructured": ["method=l_obd"],
    "l_obd_rows_cols": ["method=l_obd", "structure=rows_cols", *UNCOUPLED, "sparsity=0.3", "schedule=linear", *SHOTS],
    "k_obd_unstructured": ["method=k_obd"],
    "k_obd_nm": ["method=k_obd", "structure=nm"],
    "k_obd_rows_cols": ["method=k_obd", "structure=rows_cols", *UNCOUPLED, "sparsity=0.3", "schedule=linear", *SHOTS],
    "k_obd_fisher": ["method=k_obd", "curvature.source=fisher"],
    "surgeon_unstructured": [*SURGEON],
    "surgeon_layer_scope": [*SURGEON, "method.allocation=layer"],
    "surgeon_nm": [*SURGEON, "structure=nm"],
    "surgeon_nm_elements": [*SURGEON, "structure=nm", "structure.fill=elements"],
    "surgeon_nm_sequential": [*SURGEON, "structure=nm", "structure.select=sequential"],
    "surgeon_rows_cols": [*SURGEON, "structure=rows_cols", *UNCOUPLED, "sparsity=0.3"],
    "surgeon_true_fisher": [*SURGEON, "curvature.fisher=true"],
    "surgeon_disk_store": [*SURGEON, "curvature.store=disk"],
    "surgeon_diagonal": [*SURGEON, "curvature=diagonal", "curvature.source=kfac"],
    "surgeon_lora": [*SURGEON, "schedule.lora.steps=2"],
    "slimgpt": ["method=slimgpt", "sparsity=0.4"],
    "slimgpt_uniform": ["method=slimgpt", "sparsity=0.4", "schedule.curve=uniform"],
    "compresso": ["method=compresso", "sparsity=0.3", "method.steps=6", "method.warmup_steps=3",
                  "method.finetune_steps=2", "method.batch_size=2", "method.data.seq_len=48",
                  "method.prompt.text=You are being pruned."],
    "opt_sparsegpt": ["model=tiny_opt", "method=sparsegpt", "method.blocksize=32"],
    "opt_surgeon": ["model=tiny_opt", *SURGEON],
    # 0.2, not 0.3: at 0.3 the first shot's threshold lay 1e-7 relative from the next row's cost, so CPUs
    # that order float sums differently removed different rows; at 0.2 the gaps are 6e-3 and 3e-3
    "opt_surgeon_rows_cols": ["model=tiny_opt", *SURGEON, "structure=rows_cols", *UNCOUPLED, "sparsity=0.2"],
    "opt_slimgpt": ["model=tiny_opt", "method=slimgpt", "sparsity=0.4"],
    "qwen2_wanda": ["model=tiny_qwen2", "method=wanda"],
    "qwen2_surgeon": ["model=tiny_qwen2", *SURGEON],
    "qwen2_slimgpt": ["model=tiny_qwen2", "method=slimgpt", "sparsity=0.4"],
    "gemma3_sparsegpt": ["model=tiny_gemma3", "method=sparsegpt", "structure=nm", "method.blocksize=32"],
    "gemma3_slimgpt": ["model=tiny_gemma3", "method=slimgpt", "sparsity=0.4"],
}


def overrides(case: str, data_dir: Path) -> list[str]:
    extra = list(CASES[case])
    if not any(o.startswith("model=") for o in extra):
        extra.insert(0, "model=tiny_llama")
    if "method=compresso" in extra:
        path = data_dir / "alpaca.json"
        path.write_text(json.dumps(ALPACA))
        extra.append(f"method.data.path={path}")
    return [*QUICK, *extra]


def fingerprint(model_dir: Path) -> dict:
    """Per saved tensor: a digest of its zero pattern, and its sum, sum of squares and a fixed
    random projection (float64), which any change of the weights moves."""
    from safetensors.torch import load_file

    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(f))
    out = {}
    for name in sorted(state):
        t = state[name].double().flatten()
        probe = torch.randn(t.numel(), generator=torch.Generator().manual_seed(t.numel()), dtype=torch.float64)
        mask = (t == 0).numpy().tobytes()
        out[name] = {"mask": hashlib.sha256(mask).hexdigest()[:16], "zeros": int((t == 0).sum()),
                     "sum": t.sum().item(), "sumsq": (t * t).sum().item(), "proj": (t @ probe).item()}
    return out


def run_case(case: str) -> dict:
    from hydra import compose, initialize_config_dir

    from surgeon.config import CONF_DIR
    from surgeon.run import execute

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides(case, tmp))
        res = execute(cfg, tmp / "run")
        return {"achieved_sparsity": res["achieved_sparsity"], "ppl": res["ppl"],
                "tensors": fingerprint(tmp / "run" / "model")}


def main(argv: list[str]) -> None:
    if not argv or argv[0] != "--record":
        raise SystemExit(__doc__)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    for case in argv[1:] or list(CASES):
        golden[case] = run_case(case)
        print(f"recorded {case}", flush=True)
    GOLDEN.write_text(json.dumps({k: golden[k] for k in CASES if k in golden}, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
