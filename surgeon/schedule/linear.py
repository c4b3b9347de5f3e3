"""`schedule=linear`: LLM Surgeon's multi-shot schedule. Shot t of T prunes to t * target / T,
with the curvature re-estimated on the partly pruned model before every shot, so later shots
see (and correct) what earlier ones did. Perplexity can be measured after each shot, which also
gives the intermediate sizes of one run (a 50% run over 40 shots passes 90%, 80%, ... of the
dense size). `schedule.lora.steps>0` interleaves a LoRA correction after every shot (lora.py)."""
from surgeon.errors import SurgeonError
from surgeon.schedule.base import Schedule


class Linear(Schedule):
    def __init__(self, cfg):
        super().__init__(cfg)
        lora = cfg.lora
        if int(lora.steps) < 0 or int(lora.rank) < 1 or float(lora.lr) <= 0:
            raise SurgeonError(f"schedule.lora needs steps >= 0, rank >= 1 and lr > 0, got {dict(lora)}")

    def targets(self, sparsity, n_layers):
        shots = int(self.cfg.shots)
        return [t * sparsity / shots for t in range(1, shots + 1)]

    def between_shots(self, ctx, shot, timings):
        if int(self.cfg.lora.steps) > 0 and ctx.windows is not None:
            from surgeon.schedule.lora import correct

            losses = correct(ctx.adapter, ctx.windows, self.cfg.lora, ctx.device, seed=ctx.seed + shot)
            timings["lora_loss"] = [losses[0], losses[-1]]
