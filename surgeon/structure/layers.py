"""`structure=layers`: whole decoder layers (depth pruning). `sparsity` is the share of the decoder
layers removed: round(sparsity x L) of them, the cheapest under one of two scores -

  block_influence (ShortGPT, Men et al. 2024): BI_l = 1 - E_tokens[cos(x_l, y_l)], with x_l the
    hidden state entering layer l and y_l the one leaving it, on the calibration windows. A layer
    that barely turns the residual stream scores near 0 (an identity layer exactly 0);
  curvature: the quadratic cost of silencing the layer, summed over the linears that write to the
    residual stream (attention output, FFN down projection): with F ~ G (x) A and no update,
        L_l = sum_W 1/2 vec(W)^T (G (x) A) vec(W) = sum_W 1/2 tr(G W A W^T),
    from whatever curvature the method has (the layer Hessian: the energy the layer adds to the
    residual stream; K-FAC: the loss's second-order change).

Removal zeroes every prunable linear of the layer (and its biases): with its writers at zero a
pre-norm layer hands its input on unchanged, which compaction (surgeon/compact.py) turns into
fewer layers. Layers are compared across the model (method.allocation=global), with no update.
"""
import torch
import torch.nn.functional as F

from surgeon.errors import SurgeonError
from surgeon.structure.base import Structure, Target, weight

SCORES = ("block_influence", "curvature")


class BlockInfluence:
    """Mean cosine between a decoder layer's input and output hidden states, token by token."""

    def __init__(self, layer):
        self.layer, self.cos_sum, self.tokens = layer, 0.0, 0

    def hooks(self):
        return [self.layer.register_forward_hook(self._observe, with_kwargs=True)]

    def _observe(self, module, args, kwargs, out):
        x = args[0] if args else kwargs["hidden_states"]
        y = out[0] if isinstance(out, tuple) else out
        cos = F.cosine_similarity(x.detach().flatten(0, -2).double(), y.detach().flatten(0, -2).double(), dim=-1)
        self.cos_sum += float(cos.sum())
        self.tokens += cos.numel()

    def influence(self) -> float:
        return 1.0 - self.cos_sum / max(self.tokens, 1)


class Layers(Structure):
    name = "layers"
    compactable = True

    def __init__(self, score: str = "block_influence"):
        if score not in SCORES:
            raise SurgeonError(f"structure.score '{score}' is not one of {', '.join(SCORES)}")
        self.score = score
        self.needs_data = score == "block_influence"

    @property
    def label(self) -> str:
        return f"layers ({self.score})"

    def check_method(self, update, scope, gradients):
        if update != "none" or scope != "global":
            raise SurgeonError("structure=layers compares whole decoder layers across the model: it needs "
                               "method.allocation=global and method.update=none (e.g. method=shortgpt)")

    def targets(self, adapter, index, layer):
        """The linears that write to the residual stream (they carry the curvature score); `units`
        holds every prunable linear of the layer, which removal zeroes."""
        linears = adapter.prunable_linears(layer)
        names = {id(m): n for n, m in linears.items()}
        return [Target(index, names[id(lin)], lin, list(linears.values())) for lin in adapter.hidden_writers(layer)]

    def statistics(self, adapter, index, layer):
        return {(index, "block"): BlockInfluence(layer)} if self.score == "block_influence" else {}

    def decide(self, targets, factors, stats, sparsity, opts, update):
        by_layer = {}
        for t in targets:
            by_layer.setdefault(t.layer, []).append(t)
        if self.score == "block_influence":
            scores = {i: stats[(i, "block")].influence() for i in by_layer}
        else:
            scores = {i: sum(quadratic_cost(weight(t, f), f) for t in ts for f in [factors(t)]) for i, ts in by_layer.items()}
        n = round(float(sparsity) * len(by_layer))
        removed = sorted(sorted(by_layer, key=lambda i: scores[i])[:n])
        for i in removed:
            for lin in by_layer[i][0].units:
                lin.weight.data.zero_()
                if lin.bias is not None:
                    lin.bias.data.zero_()
        return {(i, t.name): {"layer_score": scores[i], "layer_removed": i in removed}
                for i, ts in by_layer.items() for t in ts}


def quadratic_cost(W: torch.Tensor, kron) -> float:
    """1/2 tr(G W A W^T): the cost of zeroing all of W with no update (diagonal: 1/2 sum W^2 F)."""
    if kron.exact is not None:
        return 0.5 * float((W[:, :kron.exact.shape[1]] ** 2 * kron.exact).sum())
    return 0.5 * float((kron.G.matmul(kron.A.rmatmul(W)) * W).sum())
