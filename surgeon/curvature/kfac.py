"""`curvature=kfac`: Kronecker-factored Fisher of the full model's loss (LLM Surgeon).

For a linear s = W a + b the Fisher of [W | b] is approximated per token as G (x) A with
A = E[a~ a~^T] (a~ = [a; 1] when there is a bias, so the bias is updated with the weights) and
G = E[g g^T], g = dLoss/ds. q/k/v (gate/up) read one input and share one A; G is per linear.
Both are sums of symmetric products, accumulated as upper triangles (`add_gram`: half the cost).
Gradients come from a forward+backward pass of the whole model over the calibration windows:
the empirical Fisher (true next tokens) by default, or the true Fisher (`fisher: true`: labels
sampled from the model's own softmax). `damp` damps A, `damp_g` damps G, relative to their mean.
`dtype: float64` sums, inverts and solves in double precision (gradients and activations stay
float32): the factors of a 65k-token calibration span many orders of magnitude, and float32 sums
depend on the summation order, so on the thread count.
"""
import torch

from surgeon.curvature.base import DTYPES, Curvature, add_gram, one_of, symmetric
from surgeon.curvature.kron import Factor, Kron


class KFAC(Curvature):
    gradient_stats = True

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        one_of(cfg, "dtype", DTYPES)

    @classmethod
    def uses_gradients(cls, cfg) -> bool:
        return True

    def __init__(self, linears, cfg):
        super().__init__(linears, cfg)
        self.bias = any(lin.bias is not None for lin in linears.values())
        n_in = self.in_features + int(self.bias)
        # sums, not running means: one add per micro-batch, however far away the store is
        dtype = getattr(torch, cfg.dtype)
        self.A_sum = self.buffer(n_in, n_in, dtype=dtype)
        self.G_sum = {n: self.buffer(lin.out_features, lin.out_features, dtype=dtype) for n, lin in linears.items()}
        self.grad_tokens = dict.fromkeys(linears, 0)

    def add_batch(self, inp):
        a = self.flat(inp).to(self.A_sum.dtype)
        if self.bias:
            a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        add_gram(self.A_sum, a)
        self.tokens += a.shape[0]

    def add_grad(self, name, grad_out):
        g = self.flat(grad_out).to(self.G_sum[name].dtype)
        add_gram(self.G_sum[name], g)
        self.grad_tokens[name] += g.shape[0]

    def A(self, name: str) -> torch.Tensor:
        """E[a a^T] over calibration tokens (bias row/column last if `name` has a bias)."""
        A = symmetric(self.A_sum.to(self.device)) / max(self.tokens, 1)
        n = self.in_features + int(self.linears[name].bias is not None)
        return A[:n, :n]

    def G(self, name: str) -> torch.Tensor:
        """E[g g^T] over calibration tokens (g: loss gradient of `name`'s output)."""
        return symmetric(self.G_sum[name].to(self.device)) / max(self.grad_tokens[name], 1)

    def factors(self, name):
        bias = self.linears[name].bias is not None
        A = self.input_factor(bias, lambda: Factor(self.A(name), float(self.cfg.damp)))
        return Kron(Factor(self.G(name), float(self.cfg.damp_g)), A, bias)
