"""`method=compresso` (Xu et al. 2023): structured pruning learned during instruction tuning.

Hard-concrete gates (hard_concrete.py) on attention units (a KV group with its query heads; one
head for multi-head models), FFN neurons and hidden dimensions are trained jointly with LoRA
adapters (peft) on instruction data. A Lagrangian term drives the expected size to a target
that warms up linearly from 0:

    L = LM loss + l1 (s_hat - t) + l2 (s_hat - t)^2,   min over LoRA and gates, max over l1, l2

where s_hat = 1 - E[kept prunable parameters] / dense. Every example may open with the
collaborative prompt that tells the model it is being pruned. Then the gates become
deterministic; with `method.final_size=target` one common shift of every log_alpha (a global
threshold, found by bisection) makes the deterministic size the target, since a bounded run's
Lagrangian ends near but not at it. `method.finetune_steps` more LoRA updates follow with the
gates frozen at those values (Compresso's and CoFi's fine-tuning of the pruned model). LoRA is
merged, each kept gate's value is folded into the weights and every removed structure is zeroed
in all the linears it touches, so compaction (surgeon/compact.py) shrinks the shapes exactly.
Gates act through forward hooks: the model code is untouched.

The loop runs under `accelerate` (device placement, gradient accumulation, mixed precision);
`accelerate launch` with a DeepSpeed config scales it out (conf/experiment/compresso_llama7b.yaml).
It is a method like the curvature ones (`step` prunes the model to a sparsity), which brings its
own data and its own schedule (the warm-up), so it runs under schedule=one_shot.
"""
import logging
import time

import torch
from torch import nn

from surgeon.data import instructions
from surgeon.config import require_counts
from surgeon.errors import SurgeonError
from surgeon.method.hard_concrete import HardConcrete
from surgeon.model import lora
from surgeon.model.adapters import ADAPTERS, ROLES
from surgeon.model.placement import on_device
from surgeon.tracking.results import linear_record

log = logging.getLogger(__name__)

KINDS = ("heads", "neurons", "hidden")


class Gates(nn.Module):
    """One hard-concrete gate per attention unit, FFN neuron and hidden dimension, and the
    model's expected size under them."""

    def __init__(self, adapter, kinds, init_drop: float, temperature: float):
        super().__init__()
        layers = adapter.layers()
        heads, neurons = adapter.units(layers[0])
        n_layers, hidden = len(layers), heads.consumer.out_features
        # parameters per unit / neuron per hidden dimension that survives
        self.unit_params, self.neuron_params = heads.width, neurons.width
        self.dims = {"heads": (n_layers, heads.count), "neurons": (n_layers, neurons.count), "hidden": (hidden,)}
        self.gates = nn.ModuleDict({k: HardConcrete(self.dims[k], init_drop, temperature) for k in kinds})
        self.dense = hidden * n_layers * (self.dims["heads"][1] * self.unit_params
                                          + self.dims["neurons"][1] * self.neuron_params)
        self.multiple = {"hidden": adapter.hidden_multiple()}
        self.z: dict[str, torch.Tensor] = {}

    def resample(self) -> None:
        """Fresh samples while training, the deterministic gates otherwise (forward pre-hook)."""
        self.z = self.sample() if self.training else self.deterministic()

    def sample(self) -> dict:
        return {k: g.sample() for k, g in self.gates.items()}

    def deterministic(self) -> dict:
        # hidden gates are binary (see fold) and their count must stay a multiple of the heads
        return {k: g.deterministic(self.multiple.get(k, 1), binary=k == "hidden") for k, g in self.gates.items()}

    def _expected(self, kind: str) -> torch.Tensor:
        if kind in self.gates:
            return self.gates[kind].prob_open().sum(-1)
        return torch.tensor(float(self.dims[kind][-1]))

    def expected_sparsity(self) -> torch.Tensor:
        kept = self._expected("hidden") * (self._expected("heads") * self.unit_params
                                           + self._expected("neurons") * self.neuron_params).sum()
        return 1 - kept / self.dense

    def sparsity_of(self, z: dict) -> float:
        """The fraction of the prunable size that deterministic gates `z` remove."""
        count = {k: (z[k] > 0).sum(-1).float() if k in z else torch.tensor(float(self.dims[k][-1]))
                 for k in self.dims}
        kept = count["hidden"] * (count["heads"] * self.unit_params + count["neurons"] * self.neuron_params).sum()
        return 1 - kept.item() / self.dense

    @torch.no_grad()
    def hold_to(self, target: float, iters: int = 60) -> float:
        """Shifts every log_alpha by one constant so the deterministic gates remove `target`
        (to within one structure); the gates' ranking is kept. Returns the shift."""
        base = {k: g.log_alpha.clone() for k, g in self.gates.items()}

        def removed(c):
            for k, g in self.gates.items():
                g.log_alpha.copy_(base[k] + c)
            return self.sparsity_of(self.deterministic())

        lo, hi = -50.0, 50.0  # removed() falls as the shift rises
        for _ in range(iters):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if removed(mid) > target else (lo, mid)
        best = min((lo, hi), key=lambda c: abs(removed(c) - target))
        removed(best)
        return best

    def clamp_(self) -> None:
        for g in self.gates.values():
            g.clamp_()


def install(adapter, gates: Gates) -> list:
    """Hooks that multiply each structure's output by its gate; returns the handles. A unit's
    columns in the linear that reads it are the unit's block of `width` (the adapter's layout)."""
    handles = [adapter.model.register_forward_pre_hook(lambda *_: gates.resample())]

    def scale(kind, index, width, which):
        def hook(module, args, output=None):
            z = gates.z[kind] if index is None else gates.z[kind][index]
            if which == "input":  # pre-hook: gate the columns a unit or neuron feeds
                x = args[0]
                return ((x.unflatten(-1, (z.shape[-1], width)) * z.to(x.dtype)[:, None]).flatten(-2),)
            return output * z.to(output.dtype)  # fp32 gates must not promote a bf16 stream
        return hook

    for i, layer in enumerate(adapter.layers()):
        for units in adapter.units(layer):
            if units.kind in gates.gates:
                handles.append(units.consumer.register_forward_pre_hook(scale(units.kind, i, units.cols.shape[1], "input")))
        if "hidden" in gates.gates:  # every writer to the residual stream
            handles += [m.register_forward_hook(scale("hidden", None, 1, "output")) for m in adapter.hidden_writers(layer)]
    if "hidden" in gates.gates:
        handles.append(adapter.embeddings().register_forward_hook(scale("hidden", None, 1, "output")))
    return handles


@torch.no_grad()
def fold(adapter, z: dict) -> dict:
    """Bakes deterministic gates into plain weights: a kept gate's value scales what its
    structure writes; a closed gate's structure is zeroed in every linear it touches (so the
    zero count equals the compacted size). Hidden gates are made binary: with tied embeddings
    the same matrix is also the output head, which must not be rescaled. Returns the kept counts
    (query heads, neurons per layer; hidden dimensions)."""
    hidden = z.get("hidden")
    keep_hidden = None if hidden is None else hidden > 0
    kept = {"heads": [], "neurons": [], "hidden": None if hidden is None else int(keep_hidden.sum())}
    for i, layer in enumerate(adapter.layers()):
        for units in adapter.units(layer):
            gate = z.get(units.kind)
            if gate is not None:
                units.consumer.weight.mul_(gate[i].repeat_interleave(units.cols.shape[1]))
                units.silence((gate[i] == 0).nonzero().flatten())
            kept[units.kind].append(units.per_unit * (units.count if gate is None else int((gate[i] > 0).sum())))
        if keep_hidden is not None:
            for lin in adapter.hidden_readers(layer):
                lin.weight.data[:, ~keep_hidden] = 0.0
            for lin in adapter.hidden_writers(layer):
                lin.weight.data[~keep_hidden] = 0.0
                if lin.bias is not None:
                    lin.bias.data[~keep_hidden] = 0.0
    if keep_hidden is not None:
        adapter.embeddings().weight.data[:, ~keep_hidden] = 0.0
    return kept


class Compresso:
    """`method=compresso`: the same interface as the curvature methods (surgeon/method/prune.py)."""
    needs_data = False  # no calibration windows: it trains on instruction data
    whole_model = False  # its decisions are gates, not a global threshold over statistics

    def __init__(self, cfg, structure, schedule):
        m = cfg.method
        unknown = set(m.gates) - set(KINDS)
        if unknown or not m.gates:
            raise SurgeonError(f"method.gates must be a non-empty subset of {list(KINDS)}, got {list(m.gates)}")
        if not structure.compactable:
            raise SurgeonError("method=compresso removes heads, neurons and hidden dimensions: use structure=heads_neurons")
        if schedule.per_layer or len(schedule.targets(0.5, 1)) != 1:
            raise SurgeonError(f"method=compresso trains its own schedule (method.warmup_steps); got schedule={cfg.schedule.name}")
        require_counts(m, "method", positive=("steps", "batch_size", "grad_accum", "lora_rank", "log_every"),
                       nonnegative=("finetune_steps",))
        if m.final_size not in ("target", "learned"):
            raise SurgeonError(f"method.final_size must be target or learned, got {m.final_size}")
        if not 0 <= int(m.warmup_steps) <= int(m.steps):
            raise SurgeonError(f"method.warmup_steps must be in [0, method.steps], got {m.warmup_steps}")
        if not 0 < float(m.init_drop) < 1:
            raise SurgeonError(f"method.init_drop must be in (0, 1), got {m.init_drop}")
        if m.mixed_precision not in ("no", "fp16", "bf16"):
            raise SurgeonError(f"method.mixed_precision must be no, fp16 or bf16, got {m.mixed_precision}")
        unknown = set(m.lora_targets) - set(ROLES)
        if unknown:
            raise SurgeonError(f"method.lora_targets: unknown {sorted(unknown)} (choose from {', '.join(ROLES)})")
        adapter = ADAPTERS.get(cfg.model.model_type)
        if "hidden" in m.gates and adapter is not None and not adapter.hidden_prunable:
            raise SurgeonError(f"method.gates=hidden needs RMSNorm pre-norm layers (Llama, Qwen2, Mistral); "
                               f"{cfg.model.model_type} cannot drop hidden dimensions: use gates=[heads,neurons]")
        if (m.prompt.train or m.prompt.eval) and not str(m.prompt.text or "").strip():
            raise SurgeonError("method.prompt.train/eval is on but method.prompt.text is empty")
        instructions.check(m.data)
        self.cfg, self.training = m, None

    def step(self, ctx, sparsity: float, seed: int, timings: dict) -> list[dict]:
        """Trains gates + LoRA, then folds, merges and zeroes; returns per-linear records."""
        from accelerate import Accelerator

        m, adapter, tokenizer = self.cfg, ctx.adapter, ctx.tokenizer
        if tokenizer is None:
            raise SurgeonError("method=compresso needs a tokenizer (model.tokenizer_from for tiny models)")
        prompt = m.prompt.text if m.prompt.train else None
        examples = instructions.tokenize(instructions.load(m.data), tokenizer, prompt, int(m.data.seq_len), ctx.bos)
        if not examples:
            raise SurgeonError("no instruction example keeps a response token within method.data.seq_len")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        stream = instructions.batches(examples, int(m.batch_size), pad, seed)

        torch.manual_seed(seed)
        model = adapter.model
        gates = Gates(adapter, list(m.gates), float(m.init_drop), float(m.temperature))
        names = [n for layer in adapter.layers() for n in adapter.linear_names(layer, m.lora_targets)]
        peft_model = lora.attach(model, names, int(m.lora_rank), float(m.lora_alpha))
        if m.gradient_checkpointing:
            peft_model.enable_input_require_grads()
            peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.add_module("surgeon_gates", gates)  # inside the prepared model, so a distributed run syncs them
        handles = install(adapter, gates)
        lam = nn.Parameter(torch.zeros(2))
        lam.register_hook(lambda g: -g)  # gradient ascent on the multipliers
        opt = torch.optim.AdamW([{"params": lora.trainable(peft_model), "lr": float(m.lr), "weight_decay": 0.0},
                                 {"params": list(gates.parameters()), "lr": float(m.reg_lr), "weight_decay": 0.0},
                                 {"params": [lam], "lr": float(m.reg_lr), "weight_decay": 0.0}])
        acc = Accelerator(cpu=ctx.device.type == "cpu", gradient_accumulation_steps=int(m.grad_accum),
                          mixed_precision=m.mixed_precision)
        target, warmup, steps = sparsity, int(m.warmup_steps), int(m.steps)
        history, t0 = [], time.time()
        with on_device(model, ctx.device):
            peft_model, opt = acc.prepare(peft_model, opt)
            lam.data = lam.data.to(acc.device)

            def train(phase: str, updates: int, frozen_size: float | None = None) -> None:
                """`updates` optimizer updates; in phase "gates" under the Lagrangian, in "finetune"
                on the LM loss alone with the gates frozen deterministic (removing `frozen_size`)."""
                peft_model.train()
                gates.train(phase == "gates")
                for step in range(1, updates * int(m.grad_accum) + 1):
                    batch = {k: v.to(acc.device) for k, v in next(stream).items()}
                    update = (step - 1) // int(m.grad_accum) + 1
                    t = target * min(1.0, update / warmup) if warmup and phase == "gates" else target
                    with acc.accumulate(peft_model):
                        loss = lm_loss = peft_model(**batch, use_cache=False).loss
                        if phase == "gates":
                            s_hat = gates.expected_sparsity()
                            loss = lm_loss + lam[0] * (s_hat - t) + lam[1] * (s_hat - t) ** 2
                        else:
                            s_hat = torch.tensor(frozen_size)
                        acc.backward(loss)
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                    if phase == "gates":
                        gates.clamp_()
                    if step % int(m.grad_accum) == 0 and (update % int(m.log_every) == 0 or update in (1, updates)):
                        entry = {"phase": phase, "step": update + (steps if phase == "finetune" else 0),
                                 "lm_loss": lm_loss.item(), "expected_sparsity": s_hat.item(), "target": t,
                                 "lambda1": lam[0].item(), "lambda2": lam[1].item(), "elapsed_s": time.time() - t0}
                        history.append(entry)
                        log.info("%s step %d: loss %.3f, sparsity %.3f (target %.3f), lambda %.2f / %.2f", phase,
                                 entry["step"], entry["lm_loss"], entry["expected_sparsity"], t, entry["lambda1"],
                                 entry["lambda2"])
                        ctx.logger.log({f"train/{k}": v for k, v in entry.items() if k != "phase"})

            train("gates", steps)
            learned = gates.sparsity_of(gates.deterministic())
            shift = gates.hold_to(target) if m.final_size == "target" else 0.0
            held = gates.sparsity_of(gates.deterministic())
            log.info("gates: deterministic size removes %.4f as learned, %.4f after a log_alpha shift of %+.3f",
                     learned, held, shift)
            gates.requires_grad_(False)
            if int(m.finetune_steps):
                train("finetune", int(m.finetune_steps), held)
            peft_model = acc.unwrap_model(peft_model)
            gates.eval()
            z = gates.deterministic()
            for h in handles:
                h.remove()
            del model.surgeon_gates
            merged = lora.merge(peft_model)
            if m.gradient_checkpointing:
                merged.gradient_checkpointing_disable()
        adapter.model = merged
        kept = fold(adapter, {k: v.cpu() for k, v in z.items()})
        self.training = {"history": history, "kept": kept, "examples": len(examples), "train_s": time.time() - t0,
                         "expected_sparsity": gates.expected_sparsity().item(), "learned_sparsity": learned,
                         "held_shift": shift, "finetune_steps": int(m.finetune_steps),
                         "prompt_in_training": prompt is not None}
        return [linear_record(i, name, lin.weight)
                for i, layer in enumerate(adapter.layers()) for name, lin in adapter.prunable_linears(layer).items()]

    def report(self) -> dict:
        return {"training": self.training}

    def evaluate(self, ctx) -> dict:
        """Perplexity with the collaborative prompt read before every window (`prompt.eval`)."""
        if not self.cfg.prompt.eval:
            return {"ppl_prompt": None}
        prefix = instructions.prompt_ids(ctx.tokenizer, self.cfg.prompt.text, ctx.bos)
        return {"ppl_prompt": ctx.evaluator.perplexity(ctx.adapter.model, "pruned, with prompt", prefix=prefix)}
