"""Masks have exactly their pattern; selection scopes pick exactly their share."""
import pytest
import torch

from surgeon.errors import SurgeonError
from surgeon.model import adapter_for
from surgeon.structure import NM, Unstructured
from tests.conftest import tiny_model


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
