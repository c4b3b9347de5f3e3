"""`curvature=kfac`: Kronecker-factored Fisher of the full model's loss (LLM Surgeon).

For a linear s = W a + b the Fisher of [W | b] is approximated per token as G (x) A with
A = E[a~ a~^T] (a~ = [a; 1] when there is a bias, so the bias is updated with the weights) and
G = E[g g^T], g = dLoss/ds. Gradients come from a forward+backward pass of the whole model over
the calibration windows: the empirical Fisher (true next tokens) by default, or the true Fisher
(`curvature.fisher=true`: labels sampled from the model's own softmax).
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
        self.A = torch.zeros(n_in, n_in, dtype=torch.float32, device=self.device)
        self.G = torch.zeros(self.out_features, self.out_features, dtype=torch.float32, device=self.device)
        self.grad_tokens = 0

    def add_batch(self, inp):
        a = self.flat(inp)
        if self.bias:
            a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        k = a.shape[0]
        self.A.mul_(self.tokens / (self.tokens + k)).addmm_(a.T, a, alpha=1.0 / (self.tokens + k))
        self.tokens += k

    def add_grad(self, grad_out):
        g = self.flat(grad_out)
        k = g.shape[0]
        self.G.mul_(self.grad_tokens / (self.grad_tokens + k)).addmm_(g.T, g, alpha=1.0 / (self.grad_tokens + k))
        self.grad_tokens += k

    def matrix(self):
        return self.A[: self.in_features, : self.in_features]

    def factors(self):
        return self.G, self.A
