"""`curvature=grouped_cholesky`: the layer Hessian H = (2/n) X X^T (statistics as `hessian`),
with groups of columns (a KV group's columns of the attention output projection, a neuron's
column of the FFN down projection) scored jointly by one batched Cholesky of the diagonal blocks
of H^-1 (SlimGPT's grouped Cholesky): the group cost of OBS, `group_costs` in surgeon/update/obs.py."""
from surgeon.curvature.hessian import Hessian


class GroupedCholesky(Hessian):
    """Statistics are the layer Hessian's; what differs is how groups are scored."""
