"""`schedule=one_shot`: the whole target in one step (SparseGPT, Wanda). `shots` and
`eval_every` exist so that sweeps mixing one-shot and multi-shot methods can set them for all of
them; one_shot prunes once."""
from surgeon.schedule.base import Schedule


class OneShot(Schedule):
    def targets(self, sparsity, n_layers):
        return [sparsity]
