"""`curvature=kfac`: Kronecker-factored Fisher of the full model's loss (LLM Surgeon).

For a linear s = W a + b the Fisher of [W | b] is approximated per token as G (x) A with
A = E[a~ a~^T] (a~ = [a; 1] when there is a bias, so the bias is updated with the weights) and
G = E[g g^T], g = dLoss/ds. Gradients come from a forward+backward pass of the whole model over
the calibration windows: the empirical Fisher (true next tokens) by default, or the true Fisher
(`curvature.fisher=true`: labels sampled from the model's own softmax; the option is read by
`surgeon.config.fisher_kind`, the engine samples the labels).
"""
import torch

from surgeon.curvature.base import Curvature


class KFAC(Curvature):
    @classmethod
    def uses_gradients(cls, cfg) -> bool:
        return True

    def __init__(self, linear, cfg):
        super().__init__(linear, cfg)
        self.bias = linear.bias is not None
        n_in = self.in_features + int(self.bias)
        # sums, not running means: one add per micro-batch, however far away the store is
        self.A_sum = self.buffer(n_in, n_in)
        self.G_sum = self.buffer(self.out_features, self.out_features)
        self.grad_tokens = 0

    def add_batch(self, inp):
        a = self.flat(inp)
        if self.bias:
            a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        self.A_sum.add_((a.T @ a).to(self.A_sum.device))
        self.tokens += a.shape[0]

    def add_grad(self, grad_out):
        g = self.flat(grad_out)
        self.G_sum.add_((g.T @ g).to(self.G_sum.device))
        self.grad_tokens += g.shape[0]

    @property
    def A(self) -> torch.Tensor:
        """E[a a^T] over calibration tokens, on the linear's device."""
        return self.A_sum.to(self.device) / max(self.tokens, 1)

    @property
    def G(self) -> torch.Tensor:
        """E[g g^T] over calibration tokens (g: loss gradient of the linear's output)."""
        return self.G_sum.to(self.device) / max(self.grad_tokens, 1)

    def matrix(self):
        return self.A[: self.in_features, : self.in_features]

    def factors(self):
        return self.G, self.A
