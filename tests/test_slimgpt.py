"""SlimGPT: batched greedy OBS against brute-force greedy least squares, grouped Cholesky costs
against explicit ones, incremental ratios, and compaction: compacted logits == masked logits,
save / reload round trips, on tiny Llama (GQA), Qwen2 (q/k/v biases), OPT and Gemma 3."""
import pytest
import torch

from surgeon import compact
from surgeon.errors import SurgeonError
from surgeon.method import Method
from surgeon.model import adapter_for
from surgeon.schedule.incremental_ratio import ratios
from surgeon.structure import HeadsNeurons
from surgeon.update.obs import batched_greedy, constant, group_costs, shrinking
from tests.conftest import MOE, TINY, curvature_cfg, method_cfg, prune, tiny_model


def _problem(rows=6, cols=12, tokens=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(cols, tokens, generator=g, dtype=torch.float64)
    X[1] += 0.9 * X[0]  # correlated inputs, so updates matter
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return W, X


def _ls_error(W, X, removed_cols):
    """Brute force: min ||W X - W' X||^2 over W' that is zero on `removed_cols`."""
    keep = [c for c in range(W.shape[1]) if c not in set(removed_cols)]
    sol = torch.linalg.lstsq(X[keep].T, (W @ X).T).solution.T
    W2 = torch.zeros_like(W)
    W2[:, keep] = sol
    return ((W @ X - W2 @ X) ** 2).sum().item(), W2


def test_grouped_cholesky_costs_equal_explicit_inverse_blocks():
    W, X = _problem()
    Hinv = torch.linalg.inv(X @ X.T)
    groups = torch.arange(12).view(4, 3)
    explicit = torch.stack([torch.trace(W[:, g] @ torch.linalg.inv(Hinv[g][:, g]) @ W[:, g].T) for g in groups])
    torch.testing.assert_close(group_costs(W, Hinv, groups), explicit)
    for i, g in enumerate(groups):  # and each is the least-squares error of removing that group
        assert explicit[i].item() == pytest.approx(_ls_error(W, X, g.tolist())[0], rel=1e-8)


@pytest.mark.parametrize("group", [1, 2])
def test_batch_of_one_is_plain_greedy_obs(group):
    W, X = _problem()
    groups = torch.arange(12).view(-1, group)
    n_remove = 6 // group
    W_out, removed = batched_greedy(W, torch.linalg.inv(X @ X.T), groups, n_remove, constant(1), update=True)
    chosen = []  # greedy by brute force: each step adds the group whose joint removal errs least
    for _ in range(n_remove):
        options = [g for g in range(len(groups)) if g not in chosen]
        errs = [_ls_error(W, X, groups[chosen + [g]].flatten().tolist())[0] for g in options]
        chosen.append(options[min(range(len(options)), key=errs.__getitem__)])
    assert removed == chosen
    _, W_ls = _ls_error(W, X, groups[chosen].flatten().tolist())
    torch.testing.assert_close(W_out, W_ls.to(W_out.dtype), rtol=1e-4, atol=1e-6)


def test_batches_remove_exactly_the_asked_count_and_shrink():
    W, X = _problem(cols=40, tokens=200)
    sizes = shrinking(16, 2)
    assert [next(sizes) for _ in range(6)] == [16, 8, 4, 2, 2, 2]
    W_out, removed = batched_greedy(W, torch.linalg.inv(X @ X.T), torch.arange(40).view(-1, 1), 25,
                                    shrinking(16, 2), update=True)
    assert len(removed) == len(set(removed)) == 25
    assert (W_out == 0).all(0).sum() == 25
    err = ((W @ X - W_out.double() @ X) ** 2).sum().item()
    assert err == pytest.approx(_ls_error(W, X, removed)[0], rel=1e-3)  # the update is still optimal


def test_incremental_ratios_rise_and_average_to_target():
    for curve in ("log", "linear"):
        r = ratios(30, 0.5, curve)
        assert sum(r) / 30 == pytest.approx(0.5)
        assert all(b >= a for a, b in zip(r, r[1:])) and r[-1] > r[0]
        assert max(r) <= 0.9
    assert ratios(10, 0.3, "uniform") == pytest.approx([0.3] * 10)
    log, lin = ratios(30, 0.5, "log"), ratios(30, 0.5, "linear")
    assert log[5] > lin[5]  # the log curve rises early and flattens


def _slim(model_name, ratios_, update="obs"):
    model = tiny_model(model_name).eval()
    adapter = adapter_for(model)
    cfg = method_cfg(allocation="layer", update=update, head_batch=1, ffn_group_size=16, ffn_min_group_size=4)
    m = Method(cfg, curvature_cfg("grouped_cholesky"), HeadsNeurons())
    records = prune(adapter, m, ratios_, torch.randint(0, 256, (4, 32)))
    return model, adapter, records


@pytest.mark.parametrize("name", [n for n in TINY if n not in MOE])  # experts: tests/test_adapters.py
def test_compacted_logits_equal_masked_logits_and_reload(name, tmp_path):
    model, adapter, records = _slim(name, [0.3, 0.5])
    removed = 1 - adapter.nonzero_prunable_parameters() / adapter.prunable_parameters()
    assert removed == pytest.approx(0.4, abs=0.03)  # per-layer budgets met up to rounding
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        masked = model(ids).logits
    before, zeros = adapter.prunable_parameters(), adapter.prunable_parameters() - adapter.nonzero_prunable_parameters()
    shapes = compact.compact(model)
    att = adapter.attention(adapter.layers()[1])
    assert att.o.in_features < att.o.out_features or att.num_kv_heads == 1  # shapes really shrank
    assert before - adapter.prunable_parameters() == zeros  # every pruned weight left the tensors
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, masked, rtol=1e-4, atol=1e-4)
    compact.save(model, None, tmp_path)
    reloaded = compact.load(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, masked, rtol=1e-4, atol=1e-4)
    assert [s["ffn"] for s in shapes] == [adapter.mlp(l).output.in_features for l in adapter.layers()]


def test_uniform_llama_compaction_loads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model, _, _ = _slim("tiny_llama", 0.5)
    ids = torch.randint(0, 256, (1, 24))
    with torch.no_grad():
        masked = model(ids).logits
    compact.compact(model)
    compact.save(model, None, tmp_path)
    assert model.config.surgeon_native
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, masked, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_units_partition_each_layers_prunable_weights(name):
    """The adapter's attention units and FFN neurons own every prunable weight of a layer once:
    their columns and rows cover each linear exactly, and their parameter counts add up."""
    adapter = adapter_for(tiny_model(name))
    for layer in adapter.layers():
        units = adapter.units(layer)
        linears = adapter.prunable_linears(layer).values()
        assert sum(u.count * u.params for u in units) == sum(lin.weight.numel() for lin in linears)
        for u in units:
            assert sorted(u.cols.flatten().tolist()) == list(range(u.consumer.in_features))
            for lin, rows in zip(u.producers, u.rows):
                assert sorted(rows.flatten().tolist()) == list(range(lin.out_features))
        att = adapter.attention(layer)
        assert units[0].count * units[0].per_unit == att.num_heads and units[0].count == att.num_kv_heads


def test_structured_baselines_share_the_budget_and_leave_weights_unchanged():
    _, adapter, _ = _slim("tiny_llama", 0.5, update="none")
    for layer in adapter.layers():
        o = adapter.attention(layer).o.weight
        dead = (o == 0).all(0)
        assert dead.any()  # whole columns removed, the others as they were
    with pytest.raises(SurgeonError, match="heads_neurons is pruned layer by layer"):
        Method(method_cfg(allocation="global", update="none"), curvature_cfg("hessian"), HeadsNeurons())
