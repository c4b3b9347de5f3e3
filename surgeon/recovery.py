"""`recovery=lora`: fine-tuning that keeps the sparsity. After the method (any method), LoRA on
every prunable linear is trained on `steps` batches - fresh windows of the calibration corpus
(the calibration seed + 1), or Alpaca-style instruction data with the loss on responses - and
merged with every weight that was zero set back to zero (surgeon/model/lora.py `finetune`, the
helper of the correction between shots too). Perplexity before recovery is kept beside the final
one, and the zeros are compared: results.json says whether every one stayed.
"""
import logging
import time

import torch

from surgeon.config import require_counts
from surgeon.data import instructions
from surgeon.errors import SurgeonError
from surgeon.model import lora

log = logging.getLogger(__name__)
DATA = ("calibration", "instructions")


def check(cfg) -> None:
    if cfg.name == "none":
        return
    require_counts(cfg, "recovery", positive=("steps", "batch_size", "seq_len", "rank"))
    if float(cfg.lr) <= 0:
        raise SurgeonError(f"recovery.lr must be positive, got {cfg.lr}")
    if cfg.data not in DATA:
        raise SurgeonError(f"recovery.data '{cfg.data}' is not one of {', '.join(DATA)}")
    if cfg.data == "instructions":
        instructions.check(cfg.instructions, "recovery.instructions")


def batches(cfg, ctx, calibration):
    """The training stream: {input_ids, labels[, attention_mask]} batches."""
    from surgeon.data.windows import calibration_windows

    n, seq = int(cfg.steps) * int(cfg.batch_size), int(cfg.seq_len)
    if cfg.data == "calibration":
        windows = calibration_windows(calibration.corpus, ctx.tokenizer, n, seq, int(calibration.seed) + 1, ctx.bos)
        return iter({"input_ids": w, "labels": w} for w in windows.split(int(cfg.batch_size)))
    examples = instructions.tokenize(instructions.load(cfg.instructions), ctx.tokenizer, None, seq, ctx.bos)
    tok = ctx.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return instructions.batches(examples, int(cfg.batch_size), pad, ctx.seed)


def recover(cfg, ctx, calibration) -> dict:
    """Fine-tunes the pruned model in place; returns what results.json records."""
    adapter, t = ctx.adapter, time.time()
    linears = [lin for layer in adapter.layers() for lin in adapter.prunable_linears(layer).values()]
    zeros = [lin.weight.data == 0 for lin in linears]
    ppl_before = ctx.evaluator.perplexity(adapter.model, "before recovery")
    losses = lora.finetune(adapter, batches(cfg, ctx, calibration), int(cfg.steps), int(cfg.rank), float(cfg.alpha),
                           float(cfg.lr), ctx.device)
    after = [lin.weight.data == 0 for lin in linears]
    kept = all(torch.equal(a, b) for a, b in zip(zeros, after))
    log.info("recovery: loss %.3f -> %.3f over %d steps; zeros %s", losses[0], losses[-1], len(losses),
             "kept" if kept else "CHANGED")
    if not kept:
        raise RuntimeError("recovery changed the zero pattern of the pruned weights")
    tokens = int(cfg.steps) * int(cfg.batch_size) * int(cfg.seq_len)
    return {"data": cfg.data, "steps": int(cfg.steps), "tokens": tokens, "loss_first": losses[0],
            "loss_last": losses[-1], "losses": losses, "ppl_before": ppl_before, "zeros_kept": kept,
            "zeros": int(sum(int(z.sum()) for z in zeros)), "time_s": time.time() - t}
