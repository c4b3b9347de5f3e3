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
