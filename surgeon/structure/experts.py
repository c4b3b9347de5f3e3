"""`structure=experts`: whole routed experts of a mixture-of-experts model. `sparsity` is the share
of each MoE layer's experts removed: round(sparsity x E) of them in every MoE layer (the config
holds one expert count), the cheapest of that layer under one of four scores, over the
calibration tokens T (T_e: the tokens whose top-k holds expert e, g_e(x) its gate weight):

  frequency:   |T_e| / |T|, how often the router picks the expert;
  routed_norm: (1/|T|) sum_{x in T_e} g_e(x) ||E_e(x)||_2 = frequency x the mean gated output
               norm: the expert's expected contribution to the residual stream per token (the
               routing-frequency x output-norm saliency of REAP-style expert pruning);
  reap:        (1/|T_e|) sum_{x in T_e} g_e(x) ||E_e(x)||_2, REAP's own (Lasby et al. 2025): the mean
               over the tokens routed there, blind to how often that is;
  curvature:   the cost of silencing the expert with no update, 1/2 tr(G W A W^T) of its down
               projection (which writes the residual stream) under the method's curvature, from
               the tokens routed to it (the layer Hessian: the energy of its ungated output;
               K-FAC's G also sees the gate weight, which scales the output's gradient).

An expert no calibration token reaches scores 0 and goes first. Removal takes the expert and its
router row out of the model at once: an expert kept with zero weights would still win its share
of the routing, so only removal gives the model that compaction saves (plain `from_pretrained`
reloads it). Never fewer than the router's top-k experts stay. A multi-shot schedule counts the
removed experts from the dense count. Layers are decided one at a time (method.allocation=layer),
with no update (method.update=none; preset method=drop_experts).
"""
from dataclasses import dataclass

from surgeon.errors import SurgeonError
from surgeon.structure.base import Structure, Target, weight
from surgeon.structure.layers import quadratic_cost

SCORES = ("routed_norm", "frequency", "reap", "curvature")


@dataclass
class Slot:
    """Expert `index` of decoder layer `layer` (the module), for the structure's targets."""
    adapter: object
    layer: object
    index: int

    @property
    def experts(self):
        """The layer's experts module, as the adapter gives it (after removals too)."""
        return self.adapter.experts(self.layer)


class Experts(Structure):
    name = "experts"
    compactable = True
    layer_ratios = False  # the config holds one expert count for every layer

    def __init__(self, score: str = "routed_norm"):
        if score not in SCORES:
            raise SurgeonError(f"structure.score '{score}' is not one of {', '.join(SCORES)}")
        self.score = score
        self.needs_data = score != "curvature"
        self.sparsity = None

    @property
    def label(self) -> str:
        return f"experts ({self.score})"

    def target(self, sparsity):
        self.sparsity = sparsity  # the model's expert counts are checked against it once it loads
        return sparsity

    def check(self, adapter):
        counts = {e.dense_count for e in map(adapter.experts, adapter.layers()) if e is not None}
        if not counts:
            raise SurgeonError(f"structure=experts removes routed experts; model_type "
                               f"'{adapter.config.model_type}' has none (use structure=layers or heads_neurons)")
        if self.sparsity is not None:
            n, k = max(counts), adapter.experts_per_token()
            if n - round(self.sparsity * n) < k:
                raise SurgeonError(f"sparsity={self.sparsity} removes {round(self.sparsity * n)} of {n} experts per "
                                   f"layer, leaving fewer than the {k} the router picks per token: at most "
                                   f"{(n - k) / n:.3f}")

    def check_method(self, update, scope, gradients):
        if update != "none" or scope != "layer":
            raise SurgeonError("structure=experts removes the same number of experts from every MoE layer: it "
                               "needs method.allocation=layer and method.update=none (e.g. method=drop_experts)")

    def targets(self, adapter, index, layer):
        """Each routed expert's down projection (it carries the curvature score)."""
        experts = adapter.experts(layer)
        if experts is None:
            return []
        names = {id(m): n for n, m in adapter.prunable_linears(layer).items()}
        return [Target(index, names[id(mlp.output)], mlp.output, Slot(adapter, layer, e))
                for e, mlp in enumerate(experts.mlps())]

    def statistics(self, adapter, index, layer):
        from surgeon.model.adapters.experts import Usage  # the adapter's observer of its own routing

        experts = adapter.experts(layer)
        return {(index, "experts"): Usage(experts)} if self.needs_data and experts is not None else {}

    def decide(self, targets, factors, stats, sparsity, opts, update):
        by_layer = {}
        for t in targets:
            by_layer.setdefault(t.layer, []).append(t)
        extras = {}
        for i, ts in by_layer.items():
            slot, experts = ts[0].units, ts[0].units.experts
            scores = self.scores(i, ts, factors, stats, experts.num_experts)
            n = round(float(sparsity) * experts.dense_count) - (experts.dense_count - len(scores))
            order = sorted(range(len(scores)), key=lambda e: scores[e])
            removed, keep = sorted(order[:max(n, 0)]), sorted(order[max(n, 0):])
            ids = experts.ids  # the present experts' indices in the dense model
            slot.adapter.drop_experts(slot.layer, keep)
            names = {id(m): name for name, m in slot.adapter.prunable_linears(slot.layer).items()}
            for e, mlp in zip(keep, experts.mlps()):
                extras[(i, names[id(mlp.output)])] = {"expert": ids[e], "expert_score": scores[e],
                                                      "experts_removed": [ids[r] for r in removed]}
        return extras

    def scores(self, i, targets, factors, stats, count) -> list[float]:
        """Each present expert's score in decoder layer `i`, in the layer's order."""
        if self.score == "curvature":  # an expert no token reached (or that unrouted=dense left out) costs 0
            cost = {t.units.index: quadratic_cost(weight(t, f), f) for t in targets
                    if getattr(stats[(t.layer, t.name)], "tokens", 1) for f in [factors(t)]}
            return [cost.get(e, 0.0) for e in range(count)]
        usage = stats[(i, "experts")]
        total = max(usage.tokens, 1)
        if self.score == "frequency":
            return (usage.routed.double() / total).tolist()
        if self.score == "routed_norm":
            return (usage.gated_norm / total).tolist()
        return (usage.gated_norm / usage.routed.clamp(min=1).double()).tolist()
