"""K-FAC against explicit Fisher matrices; Kronecker OBS updates against constrained least
squares; the global threshold against brute force; a structured shot against its report."""
import pytest
import torch

from surgeon import engine
from surgeon.curvature import KFAC, Kron
from surgeon.errors import SurgeonError
from surgeon.method import Method
from surgeon.model import adapter_for
from surgeon.structure import NM, RowsCols, Unstructured
from surgeon.update import correlated as kron
from surgeon.update.obs import obs_prune
from tests.conftest import TINY, curvature_cfg, method_cfg, prune, tiny_model

KCFG = curvature_cfg("kfac", damp=0.0, damp_g=0.0)
CPU = torch.device("cpu")


def _statistics(adapter, windows, method, seed=0, mode="layerwise"):
    """Every prunable linear's statistics from the whole-model pass, by (layer, name)."""
    return engine.whole_model(adapter, windows, CPU, lambda i, layer: method.statistics(adapter, i, layer),
                              method.gradients, method.backend.labels(method.curvature_cfg), seed, 2, mode)


def _one_linear_shot(lin, factors, structure, sparsity, max_correlate=0):
    """A correlated step on one linear: costs -> select -> remove, as a method composes them."""
    W = lin.weight.data.float()
    decision = structure.select([structure.costs(W, factors)], sparsity, "global")[0]
    W, _ = structure.remove(W, decision, factors, "correlated", method_cfg(max_correlate=max_correlate), sparsity)
    lin.weight.data.copy_(W)


def _per_sample_grad(lin, x, label):
    lin.zero_grad()
    torch.nn.functional.cross_entropy(lin(x).unsqueeze(0), label.view(1)).backward()
    return torch.cat([lin.weight.grad, lin.bias.grad.unsqueeze(1)], 1).flatten()


def test_kfac_of_one_sample_is_the_explicit_fisher():
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    x, label = torch.randn(5), torch.tensor(1)
    curv = KFAC({"w": lin}, KCFG)
    out = lin(x.unsqueeze(0))
    out.register_hook(lambda g: curv.add_grad("w", g))
    curv.add_batch(x.unsqueeze(0))
    torch.nn.functional.cross_entropy(out, label.view(1)).backward()
    g = _per_sample_grad(lin, x, label)  # vec([dW | db]) in row-major order
    torch.testing.assert_close(torch.kron(curv.G("w"), curv.A("w")), torch.outer(g, g), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n", [5, 128, 129, 576, 1100])
def test_upper_triangle_gram_sums_mirror_to_the_full_products(n):
    from surgeon.curvature.base import add_gram, symmetric

    torch.manual_seed(n)
    batches = [torch.randn(k, n, dtype=torch.float64) for k in (3, 17, 40)]
    total = torch.zeros(n, n, dtype=torch.float64)
    for x in batches:
        add_gram(total, x)
    X = torch.cat(batches)
    assert torch.allclose(symmetric(total), X.T @ X, rtol=1e-12, atol=1e-10)


def test_kfac_factors_are_expectations_over_samples():
    torch.manual_seed(1)
    lin = torch.nn.Linear(4, 3)
    X, labels = torch.randn(64, 4), torch.randint(0, 3, (64,))
    curv = KFAC({"w": lin}, KCFG)
    for chunk_x, chunk_y in zip(X.split(16), labels.split(16)):  # streamed in batches
        out = lin(chunk_x)
        out.register_hook(lambda g: curv.add_grad("w", g))
        curv.add_batch(chunk_x)
        torch.nn.functional.cross_entropy(out, chunk_y, reduction="sum").backward()
    grads = torch.stack([_per_sample_grad(lin, x, y) for x, y in zip(X, labels)]).view(64, 3, 5)
    a = torch.cat([X, torch.ones(64, 1)], 1)
    g = grads[:, :, -1]  # the bias gradient of a sample is its output gradient
    torch.testing.assert_close(curv.A("w"), a.T @ a / 64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(curv.G("w"), g.T @ g / 64, rtol=1e-5, atol=1e-7)
    # and each per-sample gradient is exactly g a^T: the Kronecker form holds per sample
    torch.testing.assert_close(grads, g.unsqueeze(2) * a.unsqueeze(1), rtol=1e-5, atol=1e-7)


def test_whole_model_gradients_match_autograd():
    model = tiny_model("tiny_llama")
    adapter = adapter_for(model)
    m = Method(method_cfg(allocation="global", update="correlated"), KCFG, Unstructured())
    windows = torch.randint(0, 256, (1, 24))
    curvs = _statistics(adapter, windows, m)
    lin = adapter.layers()[1].mlp.down_proj
    saved = {}

    def keep(mod, inp, out):
        out.retain_grad()
        saved["out"] = out

    lin.register_forward_hook(keep)
    logits = model(windows).logits[:, :-1]
    torch.nn.functional.cross_entropy(logits.reshape(-1, 256), windows[:, 1:].reshape(-1), reduction="sum").backward()
    g = saved["out"].grad.reshape(-1, lin.out_features)
    expected = g.T @ g / g.shape[0]
    torch.testing.assert_close(curvs[(1, "mlp.down_proj")].G("mlp.down_proj"), expected, rtol=1e-3,
                               atol=1e-5 * expected.abs().max().item())
    # q/k/v read one input: one object, one A, and a G of each one's own
    q, k = curvs[(1, "self_attn.q_proj")], curvs[(1, "self_attn.k_proj")]
    assert q is k and q.G("self_attn.q_proj").shape != q.G("self_attn.k_proj").shape


def _full_model_pass(adapter, windows, stats):
    """The reference: one forward + backward of the whole model per window, with every linear
    hooked (what the layer-by-layer gradient pass must equal)."""
    model = adapter.model
    hooks = engine._feed(stats, gradients=True)
    hooks.append(model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True)))
    for p in model.parameters():
        p.requires_grad_(False)
    for w in windows:
        logits = model(w.unsqueeze(0), use_cache=False).logits[0, :-1].float()
        torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum").backward()
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("curvature", ["kfac", "fisher"])
@pytest.mark.parametrize("mode", ["layerwise", "whole"])
def test_layer_by_layer_gradient_pass_equals_one_full_model_autograd_pass(name, curvature, mode):
    """K-FAC's A and G (and the exact diagonal Fisher) from the pass that holds one layer at a
    time - chunks of 2 of 3 windows, the loss on the final norm and head alone - equal those of
    one full-model autograd pass, on every architecture (Gemma 3's sliding layers included); so do
    those of the engine's own whole-model pass (mode whole, the floor where the model fits)."""
    adapter = adapter_for(tiny_model(name))
    cfg = curvature_cfg("kfac", chunk=2) if curvature == "kfac" else curvature_cfg("diagonal", source="fisher", chunk=2)
    m = Method(method_cfg(allocation="global"), cfg, Unstructured())
    windows = torch.randint(0, 256, (3, 20))  # longer than Gemma's sliding window (16)
    layered = _statistics(adapter, windows, m, mode=mode)
    reference = {k: v for i, layer in enumerate(adapter.layers()) for k, v in m.statistics(adapter, i, layer).items()}
    _full_model_pass(adapter, windows, reference)
    for (i, lin), curv in layered.items():
        want = reference[(i, lin)]
        if curvature == "kfac":
            pairs = [(curv.A(lin), want.A(lin)), (curv.G(lin), want.G(lin))]
        else:
            pairs = [(curv.factors(lin).exact, want.factors(lin).exact)]
        for got, expected in pairs:
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def _spd(n, seed):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    return M @ M.T / n + 0.1 * torch.eye(n, dtype=torch.float64)


def _exact_constrained(W, G, A, Q):
    """argmin_dW vec(dW)^T (G (x) A) vec(dW) s.t. (W + dW)_Q = 0, by brute force."""
    Finv = torch.linalg.inv(torch.kron(G, A))
    w = W.flatten()
    E = torch.zeros(w.numel(), len(Q), dtype=W.dtype)
    E[Q, torch.arange(len(Q))] = 1
    delta = -Finv @ E @ torch.linalg.solve(E.T @ Finv @ E, E.T @ w)
    return (w + delta).view_as(W)


def test_correlated_update_with_whole_layer_chunk_is_exact_least_squares():
    R, C = 5, 6
    W = torch.randn(R, C, dtype=torch.float64)
    G, A = _spd(R, 0), _spd(C, 1)
    Q = torch.tensor([0, 7, 8, 13, 21, 29])
    rows, cols = Q // C, Q % C
    new = kron.correlated_update(W, torch.linalg.inv(G), torch.linalg.inv(A), rows, cols, max_correlate=0)
    torch.testing.assert_close(new, _exact_constrained(W, G, A, Q), rtol=1e-8, atol=1e-10)
    # chunked: still exactly zero at Q, and never better than the exact joint solution
    chunked = kron.correlated_update(W, torch.linalg.inv(G), torch.linalg.inv(A), rows, cols, max_correlate=2)
    assert (chunked.flatten()[Q] == 0).all()
    loss = lambda V: ((V - W).flatten() @ torch.kron(G, A) @ (V - W).flatten()).item()  # noqa: E731
    assert loss(chunked) >= loss(new) - 1e-10
    # chunks solved in one batch see only earlier batches' updates: still exactly zero at Q,
    # never better than the joint solution, and one batch of one chunk is the sequential result
    batched = kron.correlated_update(W, torch.linalg.inv(G), torch.linalg.inv(A), rows, cols, max_correlate=2, batch=4)
    assert (batched.flatten()[Q] == 0).all() and loss(batched) >= loss(new) - 1e-10
    torch.testing.assert_close(kron.correlated_update(W, torch.linalg.inv(G), torch.linalg.inv(A), rows, cols, 0, 4), new)


def test_factor_inverse_is_lapacks_exactly_but_stored_by_row():
    """The correlated update gathers rows of A^-1 per removed set: the inverse must be laid out
    by row (LAPACK's is by column, ~20x slower to gather), with LAPACK's values bit for bit."""
    from surgeon.curvature.kron import robust_cholesky_inverse_

    A = _spd(40, 3)
    inv = robust_cholesky_inverse_(A)
    assert inv.is_contiguous()
    assert torch.equal(inv, torch.cholesky_inverse(torch.linalg.cholesky(A)))


@pytest.mark.parametrize("rows", [[3] * 40, [0] * 7 + [2] * 9 + [5] * 11])
@pytest.mark.parametrize("with_g", [True, False])
def test_one_chunk_system_equals_the_padded_batched_one(rows, with_g):
    """A chunk solved alone (index_select gathers) gives what the batched, padded path gives."""
    from surgeon.update.correlated import _solve_chunks

    torch.manual_seed(len(rows))
    X, Y = torch.randn(200, 64, dtype=torch.float64), torch.randn(200, 8, dtype=torch.float64)
    Ainv = torch.linalg.inv(X.T @ X / 200 + 0.1 * torch.eye(64, dtype=torch.float64))
    Ginv = torch.linalg.inv(Y.T @ Y / 200 + 0.1 * torch.eye(8, dtype=torch.float64)) if with_g else None
    r = torch.tensor(rows)
    c = torch.cat([torch.randperm(64)[:n] for n in torch.unique_consecutive(r, return_counts=True)[1].tolist()])
    b = torch.randn(len(r), dtype=torch.float64)
    alone = _solve_chunks(Ginv, Ainv, r, c, b, [(0, len(r))])
    padded = _solve_chunks(Ginv, Ainv, torch.cat([r, r[:5]]), torch.cat([c, c[:5]]), torch.cat([b, b[:5]]),
                           [(0, len(r)), (len(r), len(r) + 5)])[:len(r)]
    torch.testing.assert_close(alone, padded, rtol=1e-10, atol=1e-12)


def test_a_later_shot_keeps_earlier_zeros_in_the_obs_constraints():
    """Shot 2 of a multi-shot run: the weights shot 1 removed must stay zero *inside* the OBS
    solve, not be re-zeroed after it, so the result is the exact least-squares solution with
    old and new zeros constrained together."""
    R, C = 5, 6
    lin = torch.nn.Linear(C, R, bias=False)  # the global step works in float32
    W = torch.randn(R, C, dtype=torch.float64)
    old = torch.tensor([3, 10, 17, 24])  # removed by an earlier shot
    W.view(-1)[old] = 0.0
    lin.weight.data.copy_(W)
    G, A = _spd(R, 3), _spd(C, 4)
    W = lin.weight.data.double()
    _one_linear_shot(lin, Kron.of(G.float(), A.float()), Unstructured(), 0.4)
    removed = (lin.weight.data == 0).flatten().nonzero().flatten()
    assert len(removed) == int(0.4 * R * C) and set(old.tolist()) <= set(removed.tolist())
    torch.testing.assert_close(lin.weight.data.double(), _exact_constrained(W, G, A, removed), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("max_correlate", [0, 1, 2, 4])
@pytest.mark.parametrize("batch", [1, 2, 8])
def test_correlated_update_never_splits_a_row_so_uncoupled_rows_are_exact(max_correlate, batch):
    """With G diagonal (or None, the identity) rows are independent, and since a chunk is made
    of whole rows, every chunk size gives the exact per-row OBS solution; splitting row 0's
    three weights over two chunks (what a plain max_correlate=2 slicing would do) would not.
    Chunks solved in batches (padded systems of unequal sizes) are as exact, rows being independent."""
    R, C = 4, 6
    W = torch.randn(R, C, dtype=torch.float64)
    A = _spd(C, 2)
    Q = torch.tensor([1, 2, 3, 9, 20, 21, 22])  # rows 0, 0, 0, 1, 3, 3, 3
    assert kron._row_chunks(Q // C, 4) == [(0, 4), (4, 7)]
    for G in (None, torch.diag(torch.rand(R, dtype=torch.float64) + 0.5)):
        new = kron.correlated_update(W, None if G is None else torch.linalg.inv(G), torch.linalg.inv(A),
                                     Q // C, Q % C, max_correlate, batch)
        exact = _exact_constrained(W, torch.eye(R, dtype=torch.float64) if G is None else G, A, Q)
        torch.testing.assert_close(new, exact)


@pytest.mark.parametrize("with_g", [True, False])
def test_rows_losing_most_weights_solved_through_their_kept_set_give_the_same_update(with_g):
    """Given A, a row that removes more than half its weights is solved through its kept set
    (A_KK, not [A^-1]_SS): the same least-squares update, for rows alone in their chunk or
    beside ordinary chunks, with G^-1 carrying each row's change to the others."""
    R, C = 5, 8
    torch.manual_seed(5)
    W = torch.randn(R, C, dtype=torch.float64)
    G, A = (_spd(R, 6) if with_g else torch.eye(R, dtype=torch.float64)), _spd(C, 7)
    Q = torch.tensor([0, 1, 2, 3, 4, 6, 9, *range(17, 32), 33])  # rows 0 (6 of 8), 1 (1), 2 (7), 3 (all 8), 4 (1)
    Ginv, Ainv = (torch.linalg.inv(G) if with_g else None), torch.linalg.inv(A)
    for max_correlate in (0, 1, 3):
        plain = kron.correlated_update(W, Ginv, Ainv, Q // C, Q % C, max_correlate)
        kept = kron.correlated_update(W, Ginv, Ainv, Q // C, Q % C, max_correlate, A=A)
        torch.testing.assert_close(kept, plain, rtol=1e-9, atol=1e-11)
        assert (kept.flatten()[Q] == 0).all()
    torch.testing.assert_close(kron.correlated_update(W, Ginv, Ainv, Q // C, Q % C, 0, A=A),
                               _exact_constrained(W, G, A, Q), rtol=1e-8, atol=1e-10)
    # rows over half are really taken the kept-set way: a wrong A changes exactly those rows' result
    if not with_g:
        wrong = kron.correlated_update(W, Ginv, Ainv, Q // C, Q % C, 1, A=2 * A + torch.eye(C, dtype=torch.float64))
        changed = (wrong - kron.correlated_update(W, Ginv, Ainv, Q // C, Q % C, 1)).abs().amax(1) > 1e-9
        assert changed.tolist() == [True, False, True, False, False]  # row 3 lost all: nothing kept to solve


def test_a_factor_that_needed_extra_damping_stands_for_the_matrix_it_inverted():
    """The kept-set solve uses A itself, so A must be the matrix A^-1 inverts, extra damping included."""
    from surgeon.curvature.kron import Factor

    M = torch.ones(6, 6, dtype=torch.float64)  # rank one: the plain Cholesky fails
    f = Factor(M, 0.0)
    inv = f.inverse(6, M)
    torch.testing.assert_close(f.M @ inv, torch.eye(6, dtype=torch.float64))


@pytest.mark.parametrize("which", ["rows", "cols"])
def test_row_and_column_updates_are_exact(which):
    R, C = 5, 4
    W = torch.randn(R, C, dtype=torch.float64)
    G, A = _spd(R, 3), _spd(C, 4)
    if which == "rows":
        idx = torch.tensor([1, 3])
        new = kron.rows_update(W, torch.linalg.inv(G), idx, 0)
        Q = torch.cat([i * C + torch.arange(C) for i in idx])
        cost = RowsCols().costs(W, Kron.of(G, A))[0]
    else:
        idx = torch.tensor([0, 2])
        new = kron.cols_update(W, torch.linalg.inv(A), idx, 0)
        Q = torch.cat([torch.arange(R) * C + i for i in idx])
        cost = RowsCols().costs(W, Kron.of(G, A))[1]
    exact = _exact_constrained(W, G, A, Q)
    torch.testing.assert_close(new, exact, rtol=1e-8, atol=1e-10)
    # the cost of one structure is the loss its removal causes: 1/2 dw^T F dw
    single = torch.tensor([idx[0]])
    Q1 = single * C + torch.arange(C) if which == "rows" else torch.arange(R) * C + single
    d = (_exact_constrained(W, G, A, Q1) - W).flatten()
    assert cost[idx[0]].item() == pytest.approx(0.5 * (d @ torch.kron(G, A) @ d).item(), rel=1e-8)


def test_rows_cols_threshold_counts_overlap_once_and_matches_brute_force():
    torch.manual_seed(0)
    shapes = [(6, 4), (3, 8), (5, 5)]
    rc = [(torch.rand(R), torch.rand(C)) for R, C in shapes]
    total = sum(R * C for R, C in shapes)
    for sparsity in (0.2, 0.5, 0.8):
        picked = RowsCols().select(rc, sparsity, "global")
        removed = sum(len(r) * C + len(c) * R - len(r) * len(c) for (r, c), (R, C) in zip(picked, shapes))
        # brute force over all thresholds: the largest feasible one
        best = 0
        for tau in sorted(torch.cat([x for pair in rc for x in pair]).tolist()):
            n = sum(int((r <= tau).sum()) * C + int((c <= tau).sum()) * R - int((r <= tau).sum()) * int((c <= tau).sum())
                    for (r, c), (R, C) in zip(rc, shapes))
            if n <= int(sparsity * total):
                best = max(best, n)
        assert removed == best


def test_global_nm_groups_are_all_or_nothing():
    costs = [torch.rand(8, 16), torch.rand(4, 32) * 3]
    masks = NM(2, 4, "groups").select(costs, 0.25, "global")
    per_group = torch.cat([m.reshape(-1, 4).sum(1) for m in masks])
    assert set(per_group.tolist()) <= {0, 2}
    assert per_group.sum().item() == int(0.5 * per_group.numel()) * 2


def test_nm_element_fill_caps_each_group_and_the_last_shot_completes_the_pattern():
    costs = [torch.rand(8, 16), torch.rand(4, 32) * 3]
    masks = NM(2, 4, "elements").select(costs, 0.3, "global")
    per_group = torch.cat([m.reshape(-1, 4).sum(1) for m in masks])
    assert per_group.max() <= 2 and per_group.sum() == int(0.3 * per_group.numel() * 4)
    assert set(per_group.tolist()) == {0, 1, 2}  # single weights, not whole groups
    for c, mask in zip(costs, masks):  # only among each group's two cheapest
        rank = c.reshape(-1, 4).argsort(1).argsort(1)
        assert (rank[mask.reshape(-1, 4)] < 2).all()
    # next shot: the removed weights now cost 0; at the pattern every group is completed
    final = NM(2, 4, "elements").select([c.masked_fill(m, 0.0) for c, m in zip(costs, masks)], 0.5, "global")
    for m, f in zip(masks, final):
        assert (f.reshape(-1, 4).sum(1) == 2).all() and (f | ~m).all()


def test_nm_pattern_fill_tightens_every_group_each_shot_to_the_target():
    """4:8 over four shots: 7:8, 6:8, 5:8, 4:8 in every group; each shot keeps the last one's zeros."""
    costs = [torch.rand(8, 32), torch.rand(4, 64) * 3]
    structure, previous = NM(4, 8, "pattern"), None
    for shot, keep in zip(range(1, 5), (7, 6, 5, 4)):
        masked = costs if previous is None else [c.masked_fill(m, 0.0) for c, m in zip(costs, previous)]
        masks = structure.select(masked, shot * 0.5 / 4, "global")
        for c, m in zip(costs, masks):
            assert (m.reshape(-1, 8).sum(1) == 8 - keep).all()
        if previous is not None:
            assert all((m | ~p).all() for m, p in zip(masks, previous))
        previous = masks


def test_nm_pattern_fill_between_two_patterns_tightens_the_groups_whose_next_weight_is_cheapest():
    """2:4 over four shots: half the groups 3:4, all 3:4, half 2:4, all 2:4; every shot reaches its
    sparsity exactly and keeps the last one's zeros."""
    costs = [torch.rand(8, 16), torch.rand(4, 32) * 3]
    structure, previous = NM(2, 4, "pattern"), None
    for shot, counts in zip(range(1, 5), ({0, 1}, {1}, {1, 2}, {2})):
        masked = costs if previous is None else [c.masked_fill(m, 0.0) for c, m in zip(costs, previous)]
        masks = structure.select(masked, shot * 0.5 / 4, "global")
        per_group = torch.cat([m.reshape(-1, 4).sum(1) for m in masks])
        assert set(per_group.tolist()) == counts and per_group.sum() == shot * per_group.numel() // 2
        ranks = torch.cat([c.reshape(-1, 4).sort(1).values for c in masked])  # each group's costs, cheapest first
        k = min(counts)
        if len(counts) > 1:  # the groups that lose one more are those whose (k+1)-th weight is cheapest
            assert ranks[per_group > k, k].max() <= ranks[per_group == k, k].min()
        for c, m in zip(masked, masks):  # within a group, its cheapest weights go
            rank, gone = c.reshape(-1, 4).argsort(1).argsort(1), m.reshape(-1, 4)
            assert (rank < gone.sum(1, keepdim=True))[gone].all()
        if previous is not None:
            assert all((m | ~p).all() for m, p in zip(masks, previous))
        previous = masks


def test_nm_pattern_fill_over_two_shots_of_a_correlated_step_holds_3_4_then_2_4():
    model = tiny_model("tiny_llama")
    adapter = adapter_for(model)
    m = Method(method_cfg(allocation="global", update="correlated"), curvature_cfg("kfac"), NM(2, 4, "pattern"))
    windows = torch.randint(0, 256, (3, 24))
    for sparsity, zeros in ((0.25, 1), (0.5, 2)):
        prune(adapter, m, sparsity, windows)
        for layer in adapter.layers():
            for lin in adapter.prunable_linears(layer).values():
                assert ((lin.weight == 0).reshape(lin.out_features, -1, 4).sum(-1) == zeros).all()


def test_nm_fill_must_be_known():
    with pytest.raises(SurgeonError, match="structure.fill 'rows' is not one of groups, elements, pattern"):
        NM(2, 4, "rows")


def test_sequential_nm_completion_takes_sparsegpts_masks_and_solves_them_exactly():
    """select=sequential: the completing shot's masks are the ones SparseGPT's sequential OBS picks
    on A^-1 (earlier zeros kept), and the weights are the exact K-FAC least squares for them."""
    R, C = 6, 8
    lin = torch.nn.Linear(C, R, bias=False)
    W = torch.randn(R, C, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    W[0, 1] = W[3, 6] = 0.0  # an earlier shot's zeros, whatever the sequential costs say
    lin.weight.data.copy_(W)
    W = lin.weight.data.double()
    G, A = _spd(R, 5), _spd(C, 6)
    _one_linear_shot(lin, Kron.of(G.float(), A.float()), NM(2, 4, select="sequential"), 0.5)
    removed = lin.weight.data == 0
    expected = obs_prune(W, torch.linalg.inv(A), NM(2, 4), 0.5, keep=W == 0)[1]
    assert torch.equal(removed, expected) and removed[0, 1] and removed[3, 6]
    static = NM(2, 4).select([(W ** 2 / torch.diag(torch.linalg.inv(A))).masked_fill(W == 0, -1.0)], 0.5, "layer")[0]
    assert not torch.equal(removed, static)  # the order matters here
    assert (removed.reshape(R, -1, 4).sum(2) == 2).all()
    exact = _exact_constrained(W, G, A, removed.flatten().nonzero().flatten())
    torch.testing.assert_close(lin.weight.data.double(), exact, rtol=1e-4, atol=1e-5)


def test_nm_select_must_be_known():
    with pytest.raises(SurgeonError, match="structure.select 'greedy' is not one of costs, sequential"):
        NM(2, 4, select="greedy")


def test_structured_shot_zeroes_exactly_what_it_reports():
    adapter, linears, records = _surgeon_shot("tiny_opt", RowsCols(), 0.4, max_correlate=16)
    removed = 0
    assert [(r["layer"], r["name"]) for r in records] == list(linears)
    for rec, lin in zip(records, linears.values()):
        W = lin.weight
        assert int((W == 0).all(1).sum()) == rec["rows_removed"]
        assert int((W == 0).all(0).sum()) == rec["cols_removed"]
        r, c = rec["rows_removed"], rec["cols_removed"]
        removed += r * W.shape[1] + c * W.shape[0] - r * c
        assert torch.isfinite(W).all()
    total = sum(lin.weight.numel() for lin in linears.values())
    assert removed == adapter.prunable_parameters() - adapter.nonzero_prunable_parameters()
    assert 0.35 < removed / total <= 0.4


def _surgeon_shot(model_name, structure, sparsity, max_correlate=64, allocation="global"):
    adapter = adapter_for(tiny_model(model_name))
    m = Method(method_cfg(allocation=allocation, update="correlated", max_correlate=max_correlate),
               curvature_cfg("kfac", damp_g=0.1, damp=0.01), structure)
    linears = {(i, name): lin for i, layer in enumerate(adapter.layers())
               for name, lin in adapter.prunable_linears(layer).items()}
    return adapter, linears, prune(adapter, m, sparsity, torch.randint(0, 256, (2, 24)))


def test_global_unstructured_shot_hits_budget_across_layers():
    adapter, linears, _ = _surgeon_shot("tiny_llama", Unstructured(), 0.5)
    pruned = adapter.prunable_parameters() - adapter.nonzero_prunable_parameters()
    assert pruned == int(0.5 * adapter.prunable_parameters())
    per_layer = [(lin.weight == 0).float().mean().item() for lin in linears.values()]
    assert max(per_layer) - min(per_layer) > 0.05  # the threshold, not a rule, decides per layer


def test_2_4_shot_gives_the_pattern():
    _, linears, _ = _surgeon_shot("tiny_llama", NM(2, 4), 0.5)
    for lin in linears.values():
        assert ((lin.weight == 0).reshape(lin.out_features, -1, 4).sum(-1) == 2).all()


@pytest.mark.parametrize("store", ["cpu", "disk"])
def test_factors_streamed_to_cpu_or_disk_equal_the_device_ones(store):
    model = tiny_model("tiny_llama")
    adapter = adapter_for(model)
    windows = torch.randint(0, 256, (3, 16))
    got = {}
    for s in ("device", store):
        m = Method(method_cfg(allocation="global", update="correlated"), curvature_cfg("kfac", store=s),
                   Unstructured())
        got[s] = _statistics(adapter, windows, m)
    key, name = (1, "mlp.up_proj"), "mlp.up_proj"
    assert got[store][key].G_sum[name].is_shared() == (store == "disk")  # a memory-mapped file
    torch.testing.assert_close(got["device"][key].G(name), got[store][key].G(name))
    torch.testing.assert_close(got["device"][key].A(name), got[store][key].A(name))


def test_true_fisher_converges_to_the_expected_outer_product_under_the_models_predictions():
    """G of the last down_proj with labels sampled from the model (`curvature.fisher=true`, which
    YAML reads as a boolean) against sum_y p(y) g(y) g(y)^T: that output reaches only its own
    token's logits, so g_t(y) is one gradient per label. The estimate improves as 1/sqrt(samples);
    the empirical Fisher (random true labels here) is far off."""
    torch.manual_seed(0)
    model = tiny_model("tiny_llama")
    adapter = adapter_for(model)
    window = torch.randint(0, 256, (1, 12))
    last = len(adapter.layers()) - 1
    saved = {}
    hooks = [adapter.layers()[last].mlp.down_proj.register_forward_hook(lambda m, i, o: saved.update(out=o)),
             model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))]
    logits = model(window).logits[0, :-1].float()
    for h in hooks:
        h.remove()
    p, exact = logits.softmax(-1), 0.0
    for y in range(logits.shape[1]):
        loss = torch.nn.functional.cross_entropy(logits, torch.full((len(logits),), y), reduction="sum")
        g = torch.autograd.grad(loss, saved["out"], retain_graph=True)[0][0, :-1]
        exact = exact + torch.einsum("t,ti,tj->ij", p[:, y], g, g)
    exact = exact / window.shape[1]  # per position, as G is (the last one has no label)

    def error(fisher, repeats):
        m = Method(method_cfg(allocation="global", update="correlated"), curvature_cfg("kfac", fisher=fisher),
                   Unstructured())
        curvs = _statistics(adapter, window.repeat(repeats, 1), m)
        return ((curvs[(last, "mlp.down_proj")].G("mlp.down_proj") - exact).norm() / exact.norm()).item()

    few, many = error(True, 50), error(True, 200)
    assert many < 0.25 and many < 0.6 * few
    assert error("empirical", 1) > 1.0


def test_fisher_must_be_known():
    with pytest.raises(SurgeonError, match="curvature.fisher 'sampled' is not one of empirical, true"):
        Method(method_cfg(allocation="global", update="correlated"), curvature_cfg("kfac", fisher="sampled"),
               Unstructured())


def test_exact_diagonal_fisher_is_the_mean_squared_window_gradient():
    model = tiny_model("tiny_llama")
    adapter = adapter_for(model)
    windows = torch.randint(0, 256, (3, 16))
    m = Method(method_cfg(allocation="global", update="none"), curvature_cfg("diagonal", source="fisher"),
               Unstructured())
    curvs = _statistics(adapter, windows, m)
    lin = adapter.layers()[0].self_attn.k_proj
    expected = torch.zeros_like(lin.weight)
    for w in windows:  # brute force: each window's weight gradient from autograd, squared
        model.zero_grad()
        logits = model(w.unsqueeze(0)).logits[0, :-1]
        torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum").backward()
        expected += lin.weight.grad ** 2 / len(windows)
    torch.testing.assert_close(curvs[(0, "self_attn.k_proj")].factors("self_attn.k_proj").exact, expected,
                               rtol=1e-3, atol=1e-6 * expected.max().item())


def test_exact_diagonal_fisher_refuses_weight_updates():
    with pytest.raises(SurgeonError, match="exact diagonal without Kronecker factors"):
        Method(method_cfg(allocation="global", update="correlated"), curvature_cfg("diagonal", source="fisher"),
               Unstructured())


def test_lora_correction_between_shots_lowers_loss_and_keeps_the_zeros():
    from omegaconf import OmegaConf

    from surgeon.schedule.lora import correct

    adapter, linears, _ = _surgeon_shot("tiny_llama", Unstructured(), 0.5)
    model = adapter.model
    windows = torch.randint(0, 256, (2, 24))
    zeros = {k: lin.weight == 0 for k, lin in linears.items()}
    before = {k: lin.weight.detach().clone() for k, lin in linears.items()}
    losses = correct(adapter, windows, OmegaConf.create({"rank": 4, "alpha": 8, "lr": 1e-2, "steps": 25}), CPU)
    assert losses[-1] < losses[0]
    for k, lin in linears.items():
        assert isinstance(lin, torch.nn.Linear) and type(lin) is torch.nn.Linear  # LoRA merged and gone
        assert (lin.weight[zeros[k]] == 0).all()          # pruned weights stay pruned
    assert any(not torch.equal(before[k], lin.weight) for k, lin in linears.items())  # survivors moved
    for layer in adapter.layers():
        assert all(type(m) is torch.nn.Linear for m in adapter.prunable_linears(layer).values())


@pytest.mark.parametrize("batches", [1, 7])
def test_float64_factors_give_the_double_precision_correlated_step_whatever_the_batching(batches):
    """`curvature.dtype=float64`: float32 inputs and output gradients, fed in any batching, give
    K-FAC's factors and its correlated OBS step as computed wholly in double precision (masks
    equal, weights to float32 rounding); float32 factors land further from it."""
    from types import SimpleNamespace

    from surgeon.structure.base import weight

    gen = torch.Generator().manual_seed(5)
    X = torch.randn(3000, 48, generator=gen)
    X[:, 1::2] = X[:, ::2] + 1e-2 * X[:, 1::2]                            # nearly collinear: A ill-conditioned
    D = torch.randn(3000, 16, generator=gen) * torch.logspace(0, -3, 16)  # gradients over three orders
    lin = torch.nn.Linear(48, 16)
    a = torch.cat([X.double(), torch.ones(3000, 1, dtype=torch.float64)], 1)
    A, G = a.T @ a / 3000, D.double().T @ D.double() / 3000
    structure, opts = Unstructured(), method_cfg(max_correlate=0)

    def step(W, f):
        mask = structure.select([structure.costs(W, f)], 0.5, "layer")[0]
        return structure.remove(W.clone(), mask, f, "correlated", opts, 0.5)[0]

    W0 = torch.cat([lin.weight.data, lin.bias.data.unsqueeze(1)], 1)
    ref = step(W0.double(), Kron.of(G, A, damp_g=0.1, damp_a=0.01, bias=True))

    def pruned(dtype):
        curv = KFAC({"w": lin}, curvature_cfg("kfac", damp=0.01, damp_g=0.1, dtype=dtype))
        for x, d in zip(X.chunk(batches), D.chunk(batches)):
            curv.add_batch(x)
            curv.add_grad("w", d)
        f = curv.factors("w")
        W = weight(SimpleNamespace(linear=lin), f)
        assert W.dtype == f.dtype == getattr(torch, dtype)
        if dtype == "float64":
            torch.testing.assert_close(curv.A("w"), A, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(curv.G("w"), G, rtol=1e-12, atol=1e-15)
        return step(W, f)

    W = pruned("float64")
    assert torch.equal(W == 0, ref == 0)
    torch.testing.assert_close(W.float(), ref.float(), rtol=1e-6, atol=1e-7)
    err = {d: (pruned(d).double() - ref).abs().max().item() for d in ("float32", "float64")}
    assert err["float64"] < err["float32"] / 10, err


def test_rows_solved_through_their_kept_set_are_as_accurate_in_float32_as_the_plain_solve():
    """The kept-set rows land in M like every row, so M A^-1 carries A's conditioning into them as
    into the others: in float32 (what runs use) their error stays that of the plain solve, for an
    A with outlier channels (condition ~1e5) too. Reference: the plain solve in float64."""
    torch.manual_seed(0)
    R, C = 48, 256
    X = torch.randn(C, 64, dtype=torch.float64) * torch.logspace(0, 2, C, dtype=torch.float64)[:, None]
    A = X @ X.T / 64
    A += 1e-4 * A.diag().mean() * torch.eye(C, dtype=torch.float64)
    Y = torch.randn(R, 512, dtype=torch.float64)
    G = Y @ Y.T / 512 + 0.01 * torch.eye(R, dtype=torch.float64)
    W = torch.randn(R, C, dtype=torch.float64)
    share = torch.where(torch.arange(R) % 2 == 0, 0.7, 0.3)  # every other row over half: the kept-set way
    rows, cols = (torch.rand(R, C).argsort(1) < (share * C).long()[:, None]).nonzero(as_tuple=True)
    Ginv, Ainv = torch.linalg.inv(G), torch.linalg.inv(A)
    ref = kron.correlated_update(W, Ginv, Ainv, rows, cols, 100)
    f32 = [t.float() for t in (W, Ginv, Ainv)]

    def err(new):
        return float((new.double() - ref).norm() / (ref - W).norm())
    plain = err(kron.correlated_update(*f32, rows, cols, 100))
    kept = err(kron.correlated_update(*f32, rows, cols, 100, A=A.float()))
    assert plain < 1e-3 and kept < 2 * plain
