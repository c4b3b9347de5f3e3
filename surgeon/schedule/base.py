"""What every schedule shares: the loop over shots. A schedule says which sparsity each shot
prunes to (`targets`); each shot is one step of the method, then whatever the schedule does
between shots, then - every `eval_every` shots and after the last - perplexity on the first
`eval_max_tokens` tokens of each eval corpus (null: the full protocol, which tables then show as
columns of their own). Each shot is recorded: its target, the sparsity measured on the weights,
its times and perplexities."""
import logging
import time

from surgeon.config import require_counts
from surgeon.errors import SurgeonError

log = logging.getLogger(__name__)


class Schedule:
    per_layer = False  # True: a shot prunes each decoder layer to its own sparsity

    def __init__(self, cfg):
        self.cfg = cfg
        require_counts(cfg, "schedule", positive=("shots",), nonnegative=("eval_every",),
                       why={"eval_every": "0: only the final evaluation"})
        if cfg.eval_max_tokens is not None and int(cfg.eval_max_tokens) < 1:
            raise SurgeonError(f"schedule.eval_max_tokens must be positive or null, got {cfg.eval_max_tokens}")

    def targets(self, sparsity: float, n_layers: int) -> list:
        """The sparsity of each shot (a list per shot where each layer has its own)."""
        raise NotImplementedError

    def between_shots(self, ctx, shot: int, timings: dict) -> None:
        """Work after a shot's pruning (LoRA correction)."""

    def run(self, method, ctx, sparsity: float, layer_sparsity=None) -> tuple[list[dict], list[dict]]:
        """Prunes the model to `sparsity`; returns (the last shot's per-linear records, shots).
        `layer_sparsity` (OWL) turns each shot's target into per-layer ratios."""
        adapter, every = ctx.adapter, int(self.cfg.eval_every)
        dense = adapter.prunable_parameters()
        targets = self.targets(sparsity, len(adapter.layers()))
        records, shots = [], []
        for t, target in enumerate(targets, 1):
            timings, start = {}, time.time()
            if layer_sparsity is not None:
                target = layer_sparsity.layer_ratios(ctx, target, sparsity)
                timings.update(layer_sparsity_s=time.time() - start, **layer_sparsity.report())
            records = method.step(ctx, target, seed=ctx.seed + t - 1, timings=timings)
            self.between_shots(ctx, t, timings)
            per_layer = isinstance(target, list)
            entry = {"shot": t, "target_sparsity": sparsity if per_layer else target,
                     "achieved_sparsity": 1 - adapter.nonzero_prunable_parameters() / dense,
                     "prune_s": time.time() - start, **timings, **({"layer_ratios": target} if per_layer else {})}
            if every and (t % every == 0 or t == len(targets)):
                cap = self.cfg.eval_max_tokens
                entry["ppl"] = ctx.evaluator.perplexity(adapter.model, f"shot {t}", cap)
                entry["full_eval"] = cap is None  # the table-grade protocol: tables show this size too
            shots.append(entry)
            ctx.logger.log({"shot": t, "shot_sparsity": entry["achieved_sparsity"],
                            **{f"shot_ppl/{k}": v for k, v in entry.get("ppl", {}).items()}})
            log.info("shot %d: sparsity %.3f", t, entry["achieved_sparsity"])
        return records, shots
