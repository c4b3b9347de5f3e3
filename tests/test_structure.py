"""Masks have exactly their pattern; selection scopes pick exactly their share."""
import pytest
import torch

from surgeon.errors import SurgeonError
from surgeon.model import adapter_for
from surgeon.structure import NM, Unstructured
from tests.conftest import TINY, tiny_model


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_pattern(n, m):
    costs = torch.rand(16, 64)
    removed = NM(n, m).select([costs], 1 - n / m, "layer")[0]
    groups = removed.reshape(16, -1, m)
    assert (groups.sum(-1) == m - n).all()
    # the removed ones are the cheapest in their group
    c = costs.reshape(16, -1, m)
    assert (c.masked_fill(~groups, -1).amax(-1) <= c.masked_fill(groups, 2).amin(-1)).all()


def test_nm_width_check():
    adapter = adapter_for(tiny_model("tiny_llama"))  # widths 64 and 128
    NM(2, 16).check(adapter)
    with pytest.raises(SurgeonError, match="m=48 does not divide a layer width of 64"):
        NM(2, 48).check(adapter)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_unstructured_layer_row_and_global_scopes(sparsity):
    costs = torch.rand(32, 40)
    layer = Unstructured().select([costs], sparsity, "layer")[0]
    assert layer.sum() == int(costs.numel() * sparsity)
    assert costs[layer].max() <= costs[~layer].min()
    row = Unstructured().select([costs], sparsity, "row")[0]
    assert (row.sum(1) == int(40 * sparsity)).all()
    other = torch.rand(8, 40) * 2
    both = Unstructured().select([costs, other], sparsity, "global")
    assert sum(int(b.sum()) for b in both) == int(sparsity * (costs.numel() + other.numel()))
    threshold = max(costs[both[0]].max(), other[both[1]].max())  # one threshold over both
    assert threshold <= min(costs[~both[0]].min(), other[~both[1]].min())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_a_global_threshold_removes_exactly_the_k_cheapest_entries_of_all_tensors(dtype):
    """Against a sort of all costs joined: the same count, and nothing kept is cheaper than
    anything removed - with negative costs, infinities, earlier zeros (ties at 0) and ties at the
    threshold, where the first tied entries go."""
    from surgeon.structure.base import cheapest, kth_smallest

    g = torch.Generator().manual_seed(0)
    costs = [torch.randn(8, 24, generator=g), torch.rand(16, 8, generator=g), torch.randn(4, 4, generator=g) * 1e-30]
    costs[0][0, :6] = 0.0
    costs[1][3, :] = float("inf")
    costs[1][5, :5] = 0.25  # ties that straddle a threshold
    costs = [c.to(dtype) for c in costs]
    joined = torch.cat([c.flatten() for c in costs])
    for k in [1, 6, 100, 200, joined.numel() - 1, joined.numel()]:
        for sample in (1 << 20, 32):  # the join itself; a sample's bracket (missed ones widen)
            assert kth_smallest(costs, k, sample) == joined.sort().values[k - 1]
    for fraction in [0.0, 0.1, 0.37, 0.5, 0.9, 1.0]:
        masks = cheapest(costs, fraction, "global")
        removed = torch.cat([m.flatten() for m in masks])
        assert int(removed.sum()) == int(fraction * joined.numel())
        if 0 < removed.sum() < joined.numel():
            assert joined[removed].max() <= joined[~removed].min()
    t = torch.tensor(0.25, dtype=dtype)
    below = int((joined < t).sum())
    masks = cheapest(costs, (below + 2) / joined.numel(), "global")
    assert masks[1][5, :5].tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("name", TINY)
def test_a_channel_with_one_slice_gone_adds_nothing_so_zeroing_the_rest_keeps_the_logits(name):
    """adapter.channels against the forward: silence some FFN neurons / value channels by one
    slice (a silencing row, or all reading columns), then zero every other slice of theirs - the
    logits do not move. Value channels under GQA read one column per query head of the group."""
    adapter = adapter_for(tiny_model(name))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (2, 16), generator=g)
    dead = []
    with torch.no_grad():
        for layer in adapter.layers():
            for u in adapter.channels(layer):
                pick = torch.randperm(u.count, generator=g)[:max(1, u.count // 3)]
                by_rows, by_cols = pick[::2], pick[1::2]
                k = u.silencers[0]
                u.producers[k].weight[u.rows[k][by_rows, 0]] = 0
                if u.producers[k].bias is not None:
                    u.producers[k].bias[u.rows[k][by_rows, 0]] = 0
                u.consumer.weight[:, u.cols[by_cols].flatten()] = 0
                dead.append((u, pick))
        before = adapter.model(tokens).logits
        for u, pick in dead:
            u.silence(pick)
            u.consumer.weight[:, u.cols[pick].flatten()] = 0
        after = adapter.model(tokens).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name, allocation", [("tiny_llama", "global"), ("tiny_opt", "global"),
                                              ("tiny_llama", "layer")])
def test_coupled_rows_cols_spends_the_budget_on_weights_the_model_really_loses(name, allocation):
    """Uncoupled, a threshold leaves the gate/up rows of removed down columns (and value rows no
    output column reads) as kept, dead weights. Coupled, those are priced at the decision that
    frees them: the shot still removes at most the budget (per decoder layer with
    allocation=layer), and no nonzero weight is left in a dead channel."""
    from surgeon.structure import RowsCols
    from tests.test_kfac import _surgeon_shot

    def dead_weights(adapter):
        n = 0
        for layer in adapter.layers():
            for u in adapter.channels(layer):
                d = (u.consumer.weight == 0).all(0)[u.cols].all(1)
                for k in u.silencers:
                    d |= (u.producers[k].weight == 0).all(1)[u.rows[k][:, 0]]
                n += sum(int((p.weight[r[d, 0]] != 0).sum()) for p, r in zip(u.producers, u.rows))
                n += int((u.consumer.weight[:, u.cols[d].flatten()] != 0).sum())
        return n

    for coupled in (False, True):
        adapter, linears, records = _surgeon_shot(name, RowsCols(coupled), 0.4, 16, allocation)
        total = adapter.prunable_parameters()
        removed = total - adapter.nonzero_prunable_parameters()
        assert 0.39 * total < removed <= int(0.4 * total)
        if coupled and allocation == "layer":
            for layer in adapter.layers():
                ws = [lin.weight for lin in adapter.prunable_linears(layer).values()]
                assert 0.38 * sum(w.numel() for w in ws) < sum(int((w == 0).sum()) for w in ws) <= 0.4 * sum(
                    w.numel() for w in ws)
        freed = sum(r["rows_freed"] + r["cols_freed"] for r in records)
        if coupled:
            assert dead_weights(adapter) == 0 and freed > 0
        else:
            assert dead_weights(adapter) > 0.02 * total and freed == 0
        counted = sum(r["rows_removed"] * lin.in_features + r["cols_removed"] * lin.out_features
                      - r["rows_removed"] * r["cols_removed"] for r, lin in zip(records, linears.values()))
        assert counted == removed  # the records count every zeroed row and column once
