"""`python -m surgeon.tables DIR [DIR ...]`: paper-style tables from many results.json.

Runs are grouped by what makes figures comparable - the model, its dtype and the evaluation
protocol (window length, tokens per corpus) - and each group gets its own tables (a heading per
group when there are several); nothing of one group lands in another's cells. Within a group,
rows are methods (dense first), columns are (structure, sparsity) settings, one table per eval
corpus; the best pruned perplexity of each column is bold. Runs with zero-shot accuracy add a
table in the zero-shot papers' layout: a row per (method, setting), a column per task and the
mean, the best pruned accuracy bold, and below the methods the accuracy of always giving each
multiple-choice task's most frequent answer (a model collapsed to one answer scores it). Two runs
of one cell are never silently merged: with different seeds the cell shows their mean ± standard deviation (n runs); with the same seed the
newest is shown and a warning names both. Writes tables.md and tables.tex next to the first
directory and prints the Markdown.
"""
import argparse
import functools
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from surgeon.config import CONF_DIR, fisher_kind

_KFAC_DAMP_G = OmegaConf.load(CONF_DIR / "curvature" / "kfac.yaml").damp_g  # the preset's default
MAJORITY = "majority answer"  # zero-shot reference row: always the most frequent gold choice
REFERENCE = ("dense", MAJORITY)  # rows that are never bold
METHOD_ORDER = ["magnitude", "l_obd", "k_obd", "wanda", "sparsegpt", "slimgpt", "llm_surgeon", "compresso"]


def load_results(dirs) -> list[dict]:
    """Every results.json under `dirs`, each with where it came from (`_path`) and when (`_when`)."""
    found = []
    for d in dirs:
        d = Path(d)
        paths = [d] if d.is_file() else sorted(d.rglob("results.json"))
        for p in paths:
            r = json.loads(p.read_text())
            # which of two runs of one cell is newer: the date results.json records (runs before it
            # was recorded sort first, by path), never the file's time, which a checkout resets
            found.append({**r, "_path": str(p), "_when": (r.get("environment") or {}).get("date", "")})
    return found


def group(r: dict) -> str:
    """What a run's figures can be compared within: model, dtype, evaluation protocol."""
    p = r.get("eval_protocol", {})
    tokens = ", ".join(f"{c} {n:,}" for c, n in p.get("tokens", {}).items())
    dtype = r.get("config", {}).get("model", {}).get("dtype", "float32")
    return f"{r.get('model', '?')}, {dtype}, {p.get('seq_len', '?')}-token windows ({tokens})"


class Seeds(float):
    """A cell measured by runs with different seeds: their mean, with the spread and count."""

    def __new__(cls, values):
        self = super().__new__(cls, statistics.fmean(values))
        self.std, self.n = statistics.stdev(values), len(values)
        return self


def merge(runs: list[tuple[int, str, object, str]], what: str):
    """One cell from the runs that measured it: (seed, date, value, source) each."""
    by_seed = defaultdict(list)
    for seed, when, value, source in runs:
        by_seed[seed].append((when, value, source))
    kept = {}
    for seed, same in by_seed.items():
        same.sort(key=lambda x: (x[0], x[2]))  # date, then path: the same pick on every checkout
        if len(same) > 1:
            print(f"warning: {len(same)} runs of {what} with seed {seed} ({', '.join(s for _, _, s in same)}): "
                  f"the newest ({same[-1][2]}) is shown", file=sys.stderr)
        kept[seed] = same[-1][1]
    values = list(kept.values())
    if len(values) == 1 or not all(isinstance(v, (int, float)) for v in values):
        return values[-1]
    return Seeds(values)


def setting(r: dict, sparsity: float | None = None) -> str:
    s = r["structure"]
    return s if ":" in s else f"{s} {100 * (r['target_sparsity'] if sparsity is None else sparsity):.0f}%"


@functools.lru_cache
def _preset(method: str) -> dict:
    """What a method preset (conf/method/<name>.yaml) fixes under `method:`, and its curvature; {} for none. Read once
    per method: `label` runs for every row of every table."""
    path = CONF_DIR / "method" / f"{method}.yaml"
    if not path.exists():
        return {}
    conf = OmegaConf.to_container(OmegaConf.load(path))
    # the curvature the preset composes (`- override /curvature: kfac` in its defaults)
    curvature = [group for d in conf.get("defaults", []) if isinstance(d, dict)
                 for key, group in d.items() if key.endswith("/curvature")]
    return {**conf.get("method", {}), **({"curvature": curvature[0]} if curvature else {})}


def label(r: dict, budget: bool = False) -> str:
    """The row name: the method, plus what departs from its preset (curvature, allocation or update swapped, ratio curve, prompt, N:M fill
    and selection, rows/columns without coupled channels, K-FAC's output damping and Fisher, the Hessian's precision; with
    `budget`, the calibration size, for tables that mix sizes: `several_budgets`), so variants of one method get rows of
    their own."""
    cfg = r.get("config", {})
    sched, structure, curv = cfg.get("schedule", {}), cfg.get("structure", {}), cfg.get("curvature", {})
    tags = []
    preset = _preset(cfg.get("method", {}).get("name", ""))
    if "curvature" in preset and curv.get("name", preset["curvature"]) != preset["curvature"]:
        tags.append(f"curvature {curv['name']}")  # e.g. LLM Surgeon's schedule and update on the layer Hessian
    for part in ("allocation", "update"):  # a method's parts swapped on the command line (ablations)
        if part in preset and cfg["method"].get(part, preset[part]) != preset[part]:
            tags.append(f"{part} {cfg['method'][part]}")
    if sched.get("name") == "incremental_ratio" and sched.get("curve", "log") != "log":
        tags.append(f"{sched['curve']} ratios")
    if r.get("training") is not None and not r["training"].get("prompt_in_training", True):
        tags.append("no prompt")
    fill = structure.get("fill", "groups")
    if fill != "groups" and sched.get("name") == "linear":  # how the shots approached N:M
        tags.append({"elements": "element fill", "pattern": "pattern fill"}.get(fill, f"{fill} fill"))
    if structure.get("name") == "rows_cols" and not structure.get("coupled", False):  # runs before it existed too
        tags.append("uncoupled")
    if structure.get("select") == "sequential":  # only runs with method.update=correlated pass the checks
        tags.append("sequential N:M")
    if curv.get("name") == "kfac" and curv.get("damp_g") != _KFAC_DAMP_G:
        tags.append(f"damp_g {curv.get('damp_g')}")
    if curv.get("name") == "kfac" and fisher_kind(curv) == "true":  # stored as a YAML boolean
        tags.append("true Fisher")
    if curv.get("dtype", "float32") != "float32":  # statistics and solves in double precision
        tags.append(curv["dtype"])
    if cfg.get("layer_sparsity", {}).get("name", "uniform") != "uniform":
        tags.append(cfg["layer_sparsity"]["name"].upper())
    if r.get("recovery"):
        tags.append(f"LoRA recovery {r['recovery']['tokens']:,} tokens")
    if budget and r.get("calibration"):
        tags.append("{num_samples} x {seq_len} calibration".format(**r["calibration"]))
    return f"{r['method']} ({', '.join(tags)})" if tags else r["method"]


def several_budgets(results: list[dict]) -> bool:
    """Whether runs shown together were calibrated on different budgets (a calibration-size sweep):
    then their row names carry the budget, so that no two budgets share a cell or a line."""
    return len({tuple(sorted(r["calibration"].items())) for r in results if r.get("calibration")}) > 1


def rows(r: dict, budget: bool = False) -> list[tuple[str, list[tuple[str, dict]]]]:
    """(row name, points) of one run: its own row and, when the run also measured perplexity
    with the collaborative prompt read first (Compresso), a row for that."""
    name = label(r, budget)
    out = [(name, points(r))]
    if r.get("ppl_prompt"):
        out.append((f"{name}, prompt at inference", [(setting(r), r["ppl_prompt"])]))
    if r.get("recovery"):
        out.append((f"{name}: before", [(setting(r), r["recovery"]["ppl_before"])]))
    return out


def points(r: dict) -> list[tuple[str, dict]]:
    """(setting, ppl) of a run's end and of every intermediate shot measured on the full eval
    protocol (a multi-shot structured run to 30% also gives the 10% and 20% columns)."""
    out = {setting(r, shot["target_sparsity"]): shot["ppl"] for shot in r.get("shots", [])
           if shot.get("full_eval") and ":" not in r["structure"]}
    out[setting(r)] = r["ppl"]
    return list(out.items())


def build(results: list[dict]) -> dict:
    """{corpus: {"columns": [...], "rows": {method: {column: ppl}}}} plus a dense row, for runs of
    one group."""
    tables, budget = {}, several_budgets(results)
    corpora = sorted({c for r in results for c in r["ppl"]}, key=lambda c: (c != "wiki_heldout", c))
    columns = sorted({col for r in results for col, _ in points(r)}, key=lambda s: (":" in s, s))
    for corpus in corpora:
        cells, dense = defaultdict(lambda: defaultdict(list)), None
        for r in results:
            for name, pts in rows(r, budget):
                for col, ppl in pts:
                    if corpus in ppl:
                        cells[name][col].append((r.get("seed", 0), r.get("_when", ""), ppl[corpus],
                                                 r.get("_path", "?")))
                        dense = r["ppl_dense"][corpus]
        table = {name: {col: merge(runs, f"{name} {col} ({corpus})") for col, runs in row.items()}
                 for name, row in cells.items()}
        table["dense"] = dict.fromkeys(columns, dense)
        tables[corpus] = {"columns": columns, "rows": table}
    return tables


def _order(methods):
    def rank(m):
        base = m.split(",")[0].split(" (")[0]
        return METHOD_ORDER.index(base) if base in METHOD_ORDER else 99
    def natural(m):  # 16 x 512 before 128 x 512
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", m)]
    return sorted(methods, key=lambda m: ({"dense": 0, MAJORITY: 2}.get(m, 1), rank(m), natural(m)))


def zero_shot(results: list[dict]) -> dict | None:
    """{"columns": tasks + ["mean"], "rows": {"<method> <setting>": {task: accuracy}}} with a dense
    row, or None if no run measured zero-shot accuracy. Accuracy is each run's primary metric."""
    from surgeon.errors import SurgeonError
    from surgeon.eval import zero_shot as zero_shot_eval
    from surgeon.eval.zero_shot import STANDARD

    runs_zs = [r for r in results if r.get("zero_shot")]
    if not runs_zs:
        return None
    tasks = {t for r in runs_zs for t in r["zero_shot"]["primary"]}
    columns = sorted(tasks, key=lambda t: (STANDARD.index(t) if t in STANDARD else 99, t)) + ["mean"]
    cells = defaultdict(lambda: defaultdict(list))
    table, budget = {}, several_budgets(results)
    for r in runs_zs:
        if r.get("zero_shot_dense"):
            table["dense"] = {**r["zero_shot_dense"]["primary"], "mean": r["zero_shot_dense"]["mean"]}
        for task, acc in {**r["zero_shot"]["primary"], "mean": r["zero_shot"]["mean"]}.items():
            cells[f"{label(r, budget)}, {setting(r)}"][task].append((r.get("seed", 0), r.get("_when", ""), acc,
                                                               r.get("_path", "?")))
    for name, row in cells.items():
        table[name] = {task: merge(runs, f"{name} {task}") for task, runs in row.items()}
    limits = {r["zero_shot"]["limit"] for r in runs_zs}
    if all(r["zero_shot"]["source"] == "local" for r in runs_zs) and len(limits) == 1:
        try:
            floor = zero_shot_eval.majority(sorted(tasks), limits.pop())
        except SurgeonError as e:  # the documents' wheel is not installed here: no reference row
            print(f"note: no {MAJORITY} row ({e})", file=sys.stderr)
        else:
            table[MAJORITY] = {**floor, **({"mean": sum(floor.values()) / len(floor)} if len(floor) == len(tasks) else {})}
    return {"columns": columns, "rows": table}


def _cells(table, best_of=min):
    cols, rows = table["columns"], table["rows"]
    best = {c: best_of((rows[m][c] for m in rows if m not in REFERENCE and c in rows[m]), default=None) for c in cols}
    for m in _order(rows):
        yield m, [(rows[m].get(c), m not in REFERENCE and rows[m].get(c) == best[c]) for c in cols]


def _tex(text: str) -> str:
    return text.replace("_", "\\_").replace("%", "\\%")


def _value(v, num, pm: str = "±") -> str:
    """A cell: the value, or for runs of several seeds their mean ± std (n)."""
    return f"{num(v)} {pm} {num(v.std)} (n={v.n})" if isinstance(v, Seeds) else num(v)


def _md_block(title: str, table: dict, num, best_of=min) -> list[str]:
    """One Markdown table: a row per method, `num` formats a value, the best pruned one bold."""
    out = [title + "\n", "| method | " + " | ".join(table["columns"]) + " |", "|---|" + "---:|" * len(table["columns"])]
    for m, cells in _cells(table, best_of):
        fmt = [("—" if v is None else (f"**{_value(v, num)}**" if b else _value(v, num))) for v, b in cells]
        out.append(f"| {m} | " + " | ".join(fmt) + " |")
    return out + [""]


def _tex_block(comment: str, table: dict, num, best_of=min) -> list[str]:
    out = [f"% {comment}", "\\begin{tabular}{l" + "r" * len(table["columns"]) + "}", "\\toprule",
           "Method & " + " & ".join(_tex(c) for c in table["columns"]) + " \\\\", "\\midrule"]
    for m, cells in _cells(table, best_of):
        values = [None if v is None else _value(v, num, "$\\pm$") for v, _ in cells]
        fmt = [("--" if v is None else (f"\\textbf{{{v}}}" if b else v)) for v, (_, b) in zip(values, cells)]
        out.append(_tex(m) + " & " + " & ".join(fmt) + " \\\\")
    return out + ["\\bottomrule", "\\end{tabular}", ""]


def _ppl(v: float) -> str:
    return f"{v:.2f}"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def markdown(tables: dict, protocol: str = "") -> str:
    return "\n".join(line for corpus, t in tables.items()
                     for line in _md_block(f"**{corpus}** perplexity{protocol} (lower is better)", t, _ppl))


def zero_shot_markdown(table: dict, note: str = "") -> str:
    return "\n".join(_md_block(f"**Zero-shot accuracy** (%{note}; higher is better)", table, _pct, max))


def latex(tables: dict) -> str:
    return "\n".join(line for corpus, t in tables.items() for line in _tex_block(f"{corpus} perplexity", t, _ppl))


def zero_shot_latex(table: dict) -> str:
    return "\n".join(_tex_block("zero-shot accuracy (%)", table, _pct, max))


def zero_shot_note(results) -> str:
    zs = next(r["zero_shot"] for r in results if r.get("zero_shot"))
    limit = "all documents" if zs["limit"] is None else f"first {zs['limit']} documents per task"
    return f"; {zs['metric']} where the task has it, else acc; {zs['source']} tasks, {limit}, 0-shot"


def runs(results: list[dict]) -> str:
    """One row per run: what was measured on the weights and what it cost."""
    out = ["| method | setting | achieved sparsity | calibration | prune s | eval s | total s | peak RSS MB |",
           "|---|---|---:|---|---:|---:|---:|---:|"]
    budget = several_budgets(results)
    for r in sorted(results, key=lambda r: (setting(r),
                                             METHOD_ORDER.index(r["method"]) if r["method"] in METHOD_ORDER else 99)):
        cal, train = r.get("calibration"), r.get("training")
        cal_txt = f"{cal['num_samples']} x {cal['seq_len']}" if cal else "none"
        if train:
            cal_txt = f"trained: {train['history'][-1]['step']} steps on {train['examples']:,} examples"
        t = r.get("time_s", {})
        out.append(f"| {label(r, budget)} | {setting(r)} | {r.get('achieved_sparsity', float('nan')):.4f} | "
                   f"{cal_txt} | {t.get('prune', 0):.0f} | "
                   f"{t.get('eval', 0):.0f} | {t.get('total', 0):.0f} | {r.get('peak_rss_mb', 0):.0f} |")
    return "\n".join(out) + "\n"


def compaction(results: list[dict]) -> str:
    """What compaction bought, per structured run: parameters, file size, CPU ms/token."""
    rows = [r for r in results if r.get("compaction")]
    if not rows:
        return ""
    budget = several_budgets(results)
    out = ["| method | setting | schedule | params | compacted params | file MB | compacted MB | ms/token | "
           "compacted ms/token | speed-up | max logit diff |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (setting(r), r["method"], r["schedule"])):
        b, a = r["compaction"]["before"], r["compaction"]["after"]
        sched = ("trained" if r.get("training") else
                 r["schedule"] + (f" ({r['config']['schedule']['curve']})" if r["schedule"] == "incremental_ratio" else ""))
        out.append(f"| {label(r, budget)} | {setting(r)} | {sched} | {b['params'] / 1e6:.1f}M | {a['params'] / 1e6:.1f}M | "
                   f"{b['file_bytes'] / 2**20:.0f} | {a['file_bytes'] / 2**20:.0f} | {b['ms_per_token']:.1f} | "
                   f"{a['ms_per_token']:.1f} | {b['ms_per_token'] / a['ms_per_token']:.2f}x | "
                   f"{r['compaction']['max_logit_diff']:.1e} |")
    return "\n".join(out) + "\n"


def protocol_note(results) -> str:
    p = results[0]["eval_protocol"]
    toks = ", ".join(f"{k} {v:,}" for k, v in p["tokens"].items())
    return f" ({p['seq_len']}-token windows; tokens: {toks})"


def cli(argv, description: str, writes: str) -> tuple[list[dict], Path, argparse.Namespace]:
    """The command line shared by tables and plots: result folders in, an output folder."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("dirs", nargs="+", help="multirun folders, run folders or results.json files")
    ap.add_argument("--out", help=f"folder for {writes} (default: the first dir)")
    ap.add_argument("--wandb", action="store_true", help=f"also log {writes} as a W&B artifact (offline unless "
                    "--wandb-mode online), in the sweep's group")
    ap.add_argument("--group", help="W&B group (default: the first dir, as the sweep's jobs used)")
    ap.add_argument("--wandb-project", default="surgeon")
    ap.add_argument("--wandb-mode", default="offline", choices=["offline", "online"])
    args = ap.parse_args(argv)
    results = load_results(args.dirs)
    if not results:
        raise SystemExit(f"error: no results.json under {' '.join(args.dirs)}")
    first = Path(args.dirs[0])
    args.group = args.group or str(first)
    return results, Path(args.out or (first if first.is_dir() else first.parent)), args


def to_wandb(args, kind: str, paths) -> None:
    if args.wandb:
        from surgeon.tracking.wandb_logger import log_outputs

        where = log_outputs(args.group, kind, paths, args.wandb_project, args.wandb_mode)
        print(f"logged {kind} to W&B group {args.group} ({where}; `wandb sync` uploads an offline run)")


def render(results: list[dict]) -> tuple[str, str]:
    """(Markdown, LaTeX) of one group of runs."""
    tables = build(results)
    md = markdown(tables, protocol_note(results))
    tex = latex(tables)
    zs = zero_shot(results)
    if zs:
        md += "\n" + zero_shot_markdown(zs, zero_shot_note(results))
        tex += "\n" + zero_shot_latex(zs)
    md += "\n**Runs**\n\n" + runs(results)
    comp = compaction(results)
    if comp:
        md += "\n**Compaction** (dense-shaped masked model vs compacted; ms per generated token)\n\n" + comp
    return md, tex


def main(argv=None) -> None:
    results, out, args = cli(argv, __doc__.splitlines()[0], "tables.md / tables.tex")
    groups = defaultdict(list)
    for r in results:
        groups[group(r)].append(r)
    parts = [(key, *render(rs)) for key, rs in groups.items()]
    if len(parts) == 1:
        md, tex = parts[0][1:]
    else:
        print(f"note: {len(parts)} groups of runs that cannot share a table (model, dtype or eval protocol "
              "differ): one section each", file=sys.stderr)
        md = "\n".join(f"## {key}\n\n{m}" for key, m, _ in parts)
        tex = "\n".join(f"% {key}\n{t}" for key, _, t in parts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(md)
    (out / "tables.tex").write_text(tex)
    print(md)
    to_wandb(args, "tables", [out / "tables.md", out / "tables.tex"])


if __name__ == "__main__":
    main()
