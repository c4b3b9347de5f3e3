"""`python -m surgeon.plots DIR [DIR ...] [--out DIR]`: figures from results.json files.

- allocation_<method>_<setting>.png/.pdf: the fraction of each linear's weights a run removed,
  per decoder layer - what a global threshold decided (a per-layer allocation is flat).
- shots_<structure>.png/.pdf: perplexity against achieved sparsity after every shot of the
  multi-shot runs, one line per method (the first eval corpus).
- ppl_vs_sparsity_<structure>.png/.pdf: perplexity against achieved sparsity across the runs,
  one line per method and a panel per eval corpus (dense at 0).
- layer_sparsity.png/.pdf (runs with per-layer ratios: OWL, incremental ratios): each run's
  removed fraction per decoder layer, and OWL's outlier ratios (right axis) where recorded.
- training_<method>_<setting>.png/.pdf (trained methods, Compresso): expected sparsity against
  its warming-up target, and the LM loss, per optimizer update.
"""
import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from surgeon.tables import cli, group, label, setting, several_budgets, to_wandb  # noqa: E402


def allocation_by_layer(r: dict) -> dict[str, list[tuple[int, float]]]:
    """{linear name: [(layer, removed fraction)]} plus 'layer total', from results.json layers."""
    lines, totals = defaultdict(list), defaultdict(lambda: [0.0, 0])
    for rec in r["layers"]:
        lines[rec["name"]].append((rec["layer"], rec["sparsity"]))
        totals[rec["layer"]][0] += rec["sparsity"] * rec["numel"]
        totals[rec["layer"]][1] += rec["numel"]
    lines["layer total"] = [(i, s / n) for i, (s, n) in sorted(totals.items())]
    return dict(lines)


def plot_allocation(r: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    for name, pts in allocation_by_layer(r).items():
        xs, ys = zip(*sorted(pts))
        total = name == "layer total"
        ax.plot(xs, ys, "k-" if total else "-", lw=2.5 if total else 1, marker=None if total else ".",
                label=name, zorder=3 if total else 2)
    ax.axhline(r["achieved_sparsity"], color="grey", ls="--", lw=1, label="model")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("fraction removed")
    top = max(y for pts in allocation_by_layer(r).values() for _, y in pts)
    ax.set_ylim(0.0, min(1.0, 1.15 * top + 0.02))  # fractions on a plain axis: no offset turns noise into spikes
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.set_title(f"{r['model']} {label(r)} {setting(r)}: per-layer allocation", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save(fig, path)


def plot_layer_sparsity(results: list[dict], path: Path) -> None:
    runs = [r for r in results if any("layer_ratios" in s for s in r.get("shots", []))]
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    outliers = None
    for r in sorted(runs, key=lambda r: (r["target_sparsity"], r["method"])):
        xs, ys = zip(*allocation_by_layer(r)["layer total"])
        ax.plot(xs, ys, "-", marker=".", lw=1.2, label=f"{label(r)} {setting(r)}")
        outliers = outliers or r["shots"][-1].get("outlier_ratios")
    if outliers:
        right = ax.twinx()
        right.plot(range(len(outliers)), [100 * o for o in outliers], "k:", lw=1.5, label="outlier ratio (%)")
        right.set_ylabel("outlier ratio (%)")
        right.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("fraction removed")
    ax.set_title(f"{runs[0]['model']}: per-layer sparsity", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.08, 1.0))
    fig.tight_layout()
    _save(fig, path)


def plot_shots(results: list[dict], path: Path) -> None:
    """Dense at 0 only where the shots used the full protocol: a capped per-shot eval (the first
    `schedule.eval_max_tokens` tokens) is not comparable with the dense figure."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    corpus, caps, budget = None, set(), several_budgets(results)
    for r in sorted(results, key=lambda r: r["method"]):
        shots = [s for s in r.get("shots", []) if "ppl" in s]
        if not shots:
            continue
        corpus = corpus or next(iter(shots[0]["ppl"]))
        full = all(s.get("full_eval") for s in shots)
        if not full:
            caps.add(r.get("config", {}).get("schedule", {}).get("eval_max_tokens"))
        xs = ([0.0] if full else []) + [s["achieved_sparsity"] for s in shots]
        ys = ([r["ppl_dense"][corpus]] if full else []) + [s["ppl"][corpus] for s in shots]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{label(r, budget)}, to {setting(r)}")
    if corpus is None:
        plt.close(fig)
        return
    ax.set_yscale("log")
    ax.set_xlabel("achieved sparsity")
    cap = caps.pop() if len(caps) == 1 else None  # one shared per-shot cap goes in the label
    ax.set_ylabel(f"{corpus} perplexity" + (f" (first {int(cap):,} tokens)" if cap else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_sweep(results: list[dict], path: Path) -> None:
    """Perplexity vs achieved sparsity, one line per method (row label) across a sweep's runs,
    with the intermediate sizes a multi-shot run measured on the full protocol; dense at 0."""
    corpora = sorted({c for r in results for c in r["ppl"]}, key=lambda c: (c != "wiki_heldout", c))
    fig, axes = plt.subplots(1, len(corpora), figsize=(5 * len(corpora), 3.6), squeeze=False)
    budget = several_budgets(results)
    for ax, corpus in zip(axes[0], corpora):
        lines = defaultdict(dict)
        for r in results:
            pts = {s["achieved_sparsity"]: s["ppl"] for s in r.get("shots", []) if s.get("full_eval")}
            pts[r["achieved_sparsity"]] = r["ppl"]
            lines[label(r, budget)].update({x: p[corpus] for x, p in pts.items() if corpus in p})
            lines[label(r, budget)][0.0] = r["ppl_dense"][corpus]
        for name in sorted(lines):
            xs = sorted(lines[name])
            ax.plot(xs, [lines[name][x] for x in xs], marker="o", ms=3, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("achieved sparsity (fraction of decoder linears)")
        ax.set_ylabel(f"{corpus} perplexity")
        ax.legend(fontsize=8)
    fig.suptitle(f"{results[0]['model']}: perplexity vs sparsity", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def plot_training(r: dict, path: Path) -> None:
    hist = r["training"]["history"]
    steps = [h["step"] for h in hist]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps, [h["expected_sparsity"] for h in hist], label="expected sparsity (then deterministic)")
    ax.plot(steps, [h["target"] for h in hist], "k--", lw=1, label="target")
    tuned = [h["step"] for h in hist if h.get("phase") == "finetune"]
    if tuned:  # gates frozen at their final (held) size from here on
        ax.axvspan(tuned[0], tuned[-1], color="0.9", zorder=0, label="LoRA fine-tuning, gates frozen")
    ax.set_xlabel("update")
    ax.set_ylabel("fraction of prunable parameters")
    loss_ax = ax.twinx()
    loss_ax.plot(steps, [h["lm_loss"] for h in hist], color="tab:red", lw=0.8, alpha=0.6, label="LM loss")
    loss_ax.set_ylabel("LM loss (instruction data)", color="tab:red")
    ax.set_title(f"{r['model']} {label(r)} {setting(r)}: training", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for ext in (".png", ".pdf"):
        fig.savefig(path.with_suffix(ext), dpi=150)
    plt.close(fig)


def main(argv=None) -> None:
    results, out, args = cli(argv, __doc__.splitlines()[0], "the figures")
    groups = defaultdict(list)  # runs whose figures compare (tables.group); figures of each kept apart
    for r in results:
        groups[group(r)].append(r)
    for k, (key, rs) in enumerate(groups.items()):
        prefix = "" if len(groups) == 1 else f"group{k}_"
        if prefix:
            print(f"{prefix[:-1]}: {key}")
        budget = several_budgets(rs)  # a calibration-size sweep: one file per budget
        for r in rs:
            name = prefix + re.sub(r"[^A-Za-z0-9_-]+", "_", f"allocation_{label(r, budget)}_{setting(r)}").strip("_")
            plot_allocation(r, out / name)
            print(out / f"{name}.png")
            if r.get("training"):
                curve = name.replace("allocation_", "training_", 1)
                plot_training(r, out / curve)
                print(out / f"{curve}.png")
        plot_layer_sparsity(rs, out / f"{prefix}layer_sparsity")
        by_structure = defaultdict(list)
        for r in rs:
            by_structure[r["structure"].replace(":", "-")].append(r)
        for s, same in by_structure.items():
            plot_shots(same, out / f"{prefix}shots_{s}")
            plot_sweep(same, out / f"{prefix}ppl_vs_sparsity_{s}")
            print(out / f"{prefix}ppl_vs_sparsity_{s}.png")
    to_wandb(args, "figures", sorted(out.glob("*.png")) + sorted(out.glob("*.pdf")))


if __name__ == "__main__":
    main()
