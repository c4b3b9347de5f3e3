"""Masks have exactly their pattern."""
import pytest
import torch

from surgeon.structure import NM, Unstructured


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_pattern(n, m):
    costs = torch.rand(16, 64)
    removed = NM(n, m).select(costs)
    groups = removed.reshape(16, -1, m)
    assert (groups.sum(-1) == m - n).all()
    # the removed ones are the cheapest in their group
    c = costs.reshape(16, -1, m)
    assert (c.masked_fill(~groups, -1).amax(-1) <= c.masked_fill(groups, 2).amin(-1)).all()


def test_nm_width_check():
    from surgeon.errors import SurgeonError

    with pytest.raises(SurgeonError, match="m=8 does not divide a layer width of 12"):
        NM(2, 8).check(12)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_unstructured_layer_and_row_scopes(sparsity):
    costs = torch.rand(32, 40)
    layer = Unstructured().select(costs, sparsity, "layer")
    assert layer.sum() == int(costs.numel() * sparsity)
    assert costs[layer].max() <= costs[~layer].min()
    row = Unstructured().select(costs, sparsity, "row")
    assert (row.sum(1) == int(40 * sparsity)).all()
