"""`python -m surgeon.layer_error RUN [RUN ...]`: where pruned models depart from their dense model, layer by layer.

For each run saved with `save=true` (its pruned model in RUN/model) and each of the run's eval corpora, on
the first `--tokens` tokens of the run's own eval windows:

- local error of decoder layer l, on the dense model's inputs X to each of its prunable linears:
      r_l = sum_j ||(W~_j - W_j) X_j||^2 / sum_j ||W_j X_j||^2
  the layer-wise reconstruction objective SparseGPT minimises (and LLM Surgeon trades against the loss);
- drift at the output of decoder layer l, each model fed its own hidden states from the same tokens:
      d_l = ||h~_l - h_l||^2 / ||h_l||^2
  errors compound through depth here, as they do when the pruned model is used.

A method that fits the calibration text at another text's expense shows it as a gap between corpora in
r (the weights) or d (what reaches the head). The dense model and every pruned one are held in memory
whole, and one dense forward per batch serves them all (a diagnostic for models that fit; the pruning
runs themselves do not need that). Writes layer_error.json, layer_error.md and layer_error.png into --out.
"""
import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from surgeon import compact, tables
from surgeon import model as models
from surgeon.data.windows import eval_windows
from surgeon.errors import SurgeonError
from surgeon.eval.perplexity import window_nll
from surgeon.model.adapters import adapter_for
from surgeon.tracking.results import saved_run, write_json_atomic


def _label(r: dict) -> str:
    """The tables' row name with the calibration budget (runs of several budgets compare here), and the setting."""
    return f"{tables.label(r, budget=True)}, {tables.setting(r)}"


@torch.no_grad()
def errors(dense, pruned, windows: torch.Tensor, batch: int = 4) -> dict:
    """{"local": [r_l], "drift": [d_l], "local_by_linear": {name: [r_l]}, "ppl", "ppl_dense"} of `pruned`
    against `dense` (the perplexities over `windows`, as surgeon/eval/perplexity.py counts them)."""
    return errors_of_many(dense, [pruned], windows, batch)[0]


@torch.no_grad()
def errors_of_many(dense, pruned_models: list, windows: torch.Tensor, batch: int = 4) -> list[dict]:
    """`errors` of each pruned model, with one dense forward per batch for all of them."""
    dense_ad = adapter_for(dense)
    layers = dense_ad.layers()
    pruned_ads = [adapter_for(p) for p in pruned_models]
    num = [{} for _ in pruned_models]  # per model: (layer, linear name) -> summed squares
    den = [{} for _ in pruned_models]
    hooks = []
    for i, ld in enumerate(layers):
        pruned_lins = [ad.prunable_linears(ad.layers()[i]) for ad in pruned_ads]
        for name, lin in dense_ad.prunable_linears(ld).items():
            others = []
            for k, lins in enumerate(pruned_lins):
                other = lins.get(name)
                if other is not None and other.weight.shape == lin.weight.shape:  # compacted: no like-for-like
                    others.append((k, other))

            def hook(mod, inp, out, key=(i, name), others=others):
                for k, other in others:
                    diff = F.linear(inp[0], other.weight, other.bias) - out
                    num[k][key] = num[k].get(key, 0.0) + diff.double().pow(2).sum().item()
                    den[k][key] = den[k].get(key, 0.0) + out.double().pow(2).sum().item()
            hooks.append(lin.register_forward_hook(hook))
    drift_num = [[0.0] * len(layers) for _ in pruned_models]
    drift_den = [0.0] * len(layers)
    nll_dense, nlls = 0.0, [0.0] * len(pruned_models)
    try:
        for w in windows.split(batch):
            out = dense(w, use_cache=False, output_hidden_states=True)
            nll_dense += window_nll(out.logits, w)
            hd = out.hidden_states[1:]
            for i, a in enumerate(hd):
                drift_den[i] += a.double().pow(2).sum().item()
            for k, pruned in enumerate(pruned_models):
                out = pruned(w, use_cache=False, output_hidden_states=True)
                nlls[k] += window_nll(out.logits, w)
                for i, (a, b) in enumerate(zip(hd, out.hidden_states[1:])):
                    drift_num[k][i] += (b - a).double().pow(2).sum().item()
    finally:
        for h in hooks:
            h.remove()
    out = []
    for k in range(len(pruned_models)):
        n_, d_ = num[k], den[k]
        names = sorted({n for _, n in n_})
        local = [sum(n_.get((i, n), 0.0) for n in names) / max(sum(d_.get((i, n), 0.0) for n in names), 1e-30)
                 if any((i, n) in n_ for n in names) else None for i in range(len(layers))]
        targets = windows[:, 1:].numel()  # the perplexity protocol's: every token after a window's first
        out.append({"ppl": math.exp(nlls[k] / targets), "ppl_dense": math.exp(nll_dense / targets),
                    "local": local, "drift": [a / max(b, 1e-30) for a, b in zip(drift_num[k], drift_den)],
                    "local_by_linear": {n: [n_[(i, n)] / max(d_[(i, n)], 1e-30) if (i, n) in n_ else None
                                            for i in range(len(layers))] for n in names}})
    return out


def check(runs: list[Path]) -> list[dict]:
    """Each run's results, or one SurgeonError before any model is loaded."""
    found = []
    for r in runs:
        if not (r / "results.json").is_file():
            raise SurgeonError(f"{r} holds no results.json: give run folders (one job's folder in a sweep)")
        found.append(saved_run(r))
        if found[-1]["model"] != found[0]["model"]:
            raise SurgeonError(f"{r} pruned {found[-1]['model']}, {runs[0]} pruned {found[0]['model']}: "
                               "one dense model per call")
    return found


def measure(runs: list[Path], found: list[dict], tokens: int) -> dict:
    """The errors of `runs`, whose results (`found`) passed `check`."""
    cfgs = [OmegaConf.create(f["config"]) for f in found]
    dense, tokenizer = models.load(cfgs[0].model)
    dense.eval()
    bos = tokenizer.bos_token_id if cfgs[0].model.add_bos else None
    out = {"model": cfgs[0].model.name, "tokens": tokens, "runs": []}
    pruned = [compact.load(r / "model").eval() for r in runs]
    entries = [{"run": str(r), "label": _label(f), "corpora": {}} for r, f in zip(runs, found)]
    settings = list(dict.fromkeys((c, int(cfg.eval.seq_len)) for cfg in cfgs for c in cfg.eval.corpora))
    for corpus, seq_len in settings:
        which = [k for k, cfg in enumerate(cfgs) if corpus in cfg.eval.corpora and int(cfg.eval.seq_len) == seq_len]
        windows = eval_windows(corpus, tokenizer, seq_len, tokens, bos)
        for k, e in zip(which, errors_of_many(dense, [pruned[k] for k in which], windows)):
            entries[k]["corpora"][corpus] = e
            print(f"{entries[k]['label']} | {corpus}: ppl {e['ppl_dense']:.2f} -> {e['ppl']:.2f}, "
                  f"final drift {e['drift'][-1]:.4f}", flush=True)
    out["runs"] = entries
    return out


def _bands(n: int, k: int = 5) -> list[range]:
    step = math.ceil(n / k)
    return [range(s, min(s + step, n)) for s in range(0, n, step)]


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def markdown(res: dict) -> str:
    runs = res["runs"]
    corpora = list(runs[0]["corpora"])
    n = len(runs[0]["corpora"][corpora[0]]["drift"])
    cols = [(r, c) for r in runs for c in r["corpora"]]
    head = "| layers | " + " | ".join(f"{r['label']}, {c}" for r, c in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    lines = [f"Model {res['model']}, first {res['tokens']} tokens of each corpus's eval windows.", "",
             "| perplexity | " + " | ".join(f"{r['label']}, {c}" for r, c in cols) + " |", sep,
             "| dense | " + " | ".join(f"{r['corpora'][c]['ppl_dense']:.2f}" for r, c in cols) + " |",
             "| pruned | " + " | ".join(f"{r['corpora'][c]['ppl']:.2f}" for r, c in cols) + " |", ""]
    for key, title in (("local", "Local error r (mean over the band's layers)"),
                       ("drift", "Drift d at the band's last layer")):
        lines += [f"**{title}**", "", head, sep]
        for band in _bands(n):
            cells = []
            for r, c in cols:
                v = r["corpora"][c][key]
                x = _mean(v[i] for i in band) if key == "local" else v[band[-1]]
                cells.append("" if x is None else f"{x:.4f}")
            lines.append(f"| {band[0] + 1}-{band[-1] + 1} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = ["-", "--", ":", "-."]
    for k, run in enumerate(res["runs"]):
        for c, (corpus, e) in enumerate(run["corpora"].items()):
            for ax, key in zip(axes, ("local", "drift")):
                xs = [i + 1 for i, v in enumerate(e[key]) if v is not None]
                ax.plot(xs, [v for v in e[key] if v is not None], styles[c % len(styles)], color=f"C{k}",
                        label=f"{run['label']}, {corpus}")
    axes[0].set(title="local error r_l (dense inputs)", xlabel="decoder layer", yscale="log")
    axes[1].set(title="drift d_l (own hidden states)", xlabel="decoder layer", yscale="log")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders saved with save=true")
    ap.add_argument("--tokens", type=int, default=16384, help="eval tokens per corpus (from the start)")
    ap.add_argument("--out", required=True, help="folder for layer_error.json / .md / .png")
    args = ap.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    try:
        found = check(runs)
    except SurgeonError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = measure(runs, found, args.tokens)
    write_json_atomic(out / "layer_error.json", res)
    (out / "layer_error.md").write_text(markdown(res), encoding="utf-8")
    plot(res, out / "layer_error.png")
    print(markdown(res))


if __name__ == "__main__":
    main()
