"""SparseGPT's OBS update against brute-force least squares and against the simpler methods."""
import torch

from surgeon.curvature import Diagonal, Hessian, Identity
from surgeon.structure import NM, Target, Unstructured
from surgeon.update.obs import obs_prune
from tests.conftest import curvature_cfg, method_cfg


def correlated_inputs(n_in, tokens, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g) / n_in ** 0.5 + torch.eye(n_in)
    scale = torch.logspace(-1, 1, n_in)[torch.randperm(n_in, generator=g)]
    return (torch.randn(tokens, n_in, generator=g) @ mix) * scale


def test_single_weight_obs_update_is_least_squares():
    torch.manual_seed(0)
    X = correlated_inputs(12, 500).double()
    w = torch.randn(1, 12, dtype=torch.float64)
    w[0, 0] = 1e-3  # the cheapest weight, first in elimination order
    H = 2 * X.T @ X / X.shape[0]
    new, removed = obs_prune(w, torch.linalg.inv(H), Unstructured(), sparsity=0.09, blocksize=12)
    assert removed[0].nonzero().flatten().tolist() == [0]
    # brute force: best remaining weights for reconstructing w X with w_0 = 0
    target = X @ w[0]
    best = torch.linalg.lstsq(X[:, 1:], target.unsqueeze(1)).solution.squeeze(1)
    assert new[0, 0] == 0
    torch.testing.assert_close(new[0, 1:], best, rtol=1e-6, atol=1e-8)


def test_obs_hits_exact_pattern_and_sparsity():
    X = correlated_inputs(64, 400)
    W = torch.randn(16, 64)
    H = 2 * X.T @ X / 400 + 0.01 * torch.eye(64)
    new, removed = obs_prune(W, torch.linalg.inv(H), NM(2, 4), 0.5, blocksize=32)
    assert ((new == 0).reshape(16, -1, 4).sum(-1) >= 2).all()
    assert (new[removed] == 0).all()
    new, removed = obs_prune(W, torch.linalg.inv(H), Unstructured(), 0.5, blocksize=32)
    assert removed.sum() == W.numel() // 2


def _reconstruction_errors(structure, sparsity):
    torch.manual_seed(1)
    X = correlated_inputs(128, 2048)
    lin = torch.nn.Linear(128, 64, bias=False)
    errors = {}
    for name, cls, cfg, scope in [("magnitude", Identity, curvature_cfg("identity"), "layer"),
                                  ("wanda", Diagonal, curvature_cfg("diagonal", damp=0.0), "row"),
                                  ("sparsegpt", Hessian, curvature_cfg("hessian"), "layer")]:
        curv = cls({"w": lin}, cfg)
        curv.add_batch(X)
        kron, W = curv.factors("w"), lin.weight.data.clone()
        if name == "sparsegpt":
            new, _ = obs_prune(W, kron.Ainv(W), structure, sparsity, scope)
        else:
            new = W.masked_fill(structure.select([structure.costs(W, kron)], sparsity, scope)[0], 0)
        assert abs((new == 0).float().mean().item() - structure.target(sparsity)) < 0.02
        errors[name] = ((X @ W.T - X @ new.T) ** 2).sum().sqrt().item()
    return errors


def test_sparsegpt_reconstructs_best_unstructured():
    e = _reconstruction_errors(Unstructured(), 0.5)
    assert e["sparsegpt"] < e["wanda"] < e["magnitude"], e


def test_sparsegpt_reconstructs_best_2_4():
    e = _reconstruction_errors(NM(2, 4), 0.5)
    assert e["sparsegpt"] < e["wanda"] < e["magnitude"], e


def test_hessian_accumulates_running_mean():
    lin = torch.nn.Linear(8, 4)
    curv = Hessian({"w": lin}, curvature_cfg("hessian", damp=0.0))
    X = torch.randn(3, 50, 8)
    for b in X:
        curv.add_batch(b)
    flat = X.reshape(-1, 8)
    torch.testing.assert_close(curv.H, 2 * flat.T @ flat / 150, rtol=1e-5, atol=1e-5)


def test_singular_hessian_never_nan():
    lin = torch.nn.Linear(6, 3)
    curv = Hessian({"w": lin}, curvature_cfg("hessian", damp=0.0))
    x = torch.randn(100, 6)
    x[:, 2] = 0          # dead input
    x[:, 4] = x[:, 3]    # exactly collinear inputs: singular H without damping
    curv.add_batch(x)
    lin.weight.data[:, 3] = 1.0
    Unstructured().solve([Target(0, "w", lin)], lambda t: curv.factors("w"), 0.5,
                         method_cfg(allocation="layer", blocksize=2), "obs")
    W = lin.weight.data
    assert torch.isfinite(W).all() and (W[:, 2] == 0).all()  # a dead input's weights go first, for free
    assert int((W == 0).sum()) == 9


def test_one_cost_formula_gives_each_methods_saliency():
    """1/2 w^2 / ([G^-1]_rr [A^-1]_cc) is magnitude for F = I, Wanda's |w| ||x|| (squared) for the
    undamped activation diagonal, SparseGPT's w^2 / [H^-1]_cc for the layer Hessian, and
    K-OBD's w^2 g_r a_c for diagonal K-FAC factors."""
    torch.manual_seed(0)
    lin, X = torch.nn.Linear(16, 4, bias=False), correlated_inputs(16, 300)
    W, costs = lin.weight.data, Unstructured().costs
    curv = Identity({"w": lin}, curvature_cfg("identity"))
    torch.testing.assert_close(costs(W, curv.factors("w")), 0.5 * W ** 2)
    curv = Diagonal({"w": lin}, curvature_cfg("diagonal", damp=0.0))
    curv.add_batch(X)
    torch.testing.assert_close(costs(W, curv.factors("w")), 0.5 * (W.abs() * X.norm(dim=0)) ** 2 / len(X))
    curv = Hessian({"w": lin}, curvature_cfg("hessian", damp=0.0))
    curv.add_batch(X)
    Hinv = torch.linalg.inv(2 * X.T @ X / len(X))
    torch.testing.assert_close(costs(W, curv.factors("w")), 0.5 * W ** 2 / torch.diag(Hinv), rtol=1e-3, atol=1e-6)
    from surgeon.curvature.kron import Kron

    g, a = torch.rand(4) + 0.1, torch.rand(16) + 0.1
    torch.testing.assert_close(costs(W, Kron.of(g, a)), 0.5 * W ** 2 * torch.outer(g, a))
    torch.testing.assert_close(costs(W, Kron.of(torch.diag(g), torch.diag(a))), 0.5 * W ** 2 * torch.outer(g, a))


def test_float64_statistics_give_the_double_precision_sweep_whatever_the_batching():
    """`curvature.dtype=float64`: float32 layer inputs, fed in any batching, give SparseGPT's sweep
    as computed wholly in double precision (masks equal, weights to float32 rounding); float32
    statistics land further from it."""
    X = correlated_inputs(96, 1200, seed=3)
    X[:, 1::2] = X[:, ::2] + 1e-2 * X[:, 1::2]  # nearly collinear pairs: H is ill-conditioned
    W0 = torch.randn(24, 96, generator=torch.Generator().manual_seed(4))
    H = 2 * X.double().T @ X.double() / len(X)
    H += 0.01 * torch.diag(H).mean() * torch.eye(96, dtype=torch.float64)
    ref, ref_removed = obs_prune(W0.double(), torch.linalg.inv(H), Unstructured(), 0.5, blocksize=32)

    def pruned(dtype, batches):
        lin = torch.nn.Linear(96, 24, bias=False)
        lin.weight.data.copy_(W0)
        curv = Hessian({"w": lin}, curvature_cfg("hessian", dtype=dtype))
        for x in X.chunk(batches):
            curv.add_batch(x)
        Unstructured().solve([Target(0, "w", lin)], lambda t: curv.factors("w"), 0.5,
                             method_cfg(allocation="layer", blocksize=32), "obs")
        return lin.weight.data

    for batches in (1, 7):
        W = pruned("float64", batches)
        assert W.dtype == torch.float32
        assert torch.equal(W == 0, ref_removed)
        torch.testing.assert_close(W, ref.float(), rtol=1e-6, atol=1e-7)
    err = {d: (pruned(d, 7).double() - ref).abs().max().item() for d in ("float32", "float64")}
    assert err["float64"] < err["float32"] / 10, err
