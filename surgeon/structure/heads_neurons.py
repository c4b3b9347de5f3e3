"""`structure=heads_neurons`: whole attention units and FFN neurons, the structures that make a
model physically smaller (SlimGPT). The adapter says what they are (`Units`): an attention unit
is a KV group - one K/V head and the query heads that read it (a plain head without GQA) - whose
removal drops its query/key/value rows and output-projection columns; an FFN neuron drops a
row of every FFN input linear (gate and up, or the single input) and a column of the output one.

Per decoder layer, `ratio` of the attention units is removed (rounded, at least one unit kept)
and as many FFN neurons as bring the layer's removed parameters to `ratio` of its prunable ones.
Decisions are made on the input columns of the linears that read the units (the attention output
and FFN down projections), a group of columns per unit, priced by OBS's group cost under the
layer Hessian and removed by batched greedy OBS (surgeon/update/obs.py): attention units
`head_batch` at a time, FFN neurons in batches of `ffn_group_size` halved down to
`ffn_min_group_size` (Dynamic Group Size). With `method.update=none` (magnitude and Wanda-style
baselines) the same ranking, without updates. The removed units' producer rows are zeroed, so
compaction (surgeon/compact.py) can drop them.
"""
from surgeon.errors import SurgeonError
from surgeon.structure.base import Structure, Target
from surgeon.update.obs import batched_greedy, constant, shrinking


class HeadsNeurons(Structure):
    name = "heads_neurons"
    compactable = True

    def check(self, adapter):
        if any(len(adapter.units(layer)) != 2 for layer in adapter.layers()):
            raise SurgeonError("structure=heads_neurons prunes one FFN per layer; for mixture-of-experts layers use "
                               "structure=unstructured, nm or layers")

    def check_method(self, update, scope, gradients):
        if scope == "global" or update not in ("obs", "none") or gradients:
            raise SurgeonError("structure=heads_neurons is pruned layer by layer on the layer Hessian: it needs "
                               "method.update=obs|none, allocation layer|row and a curvature without gradients")

    def targets(self, adapter, index, layer):
        names = {id(m): n for n, m in adapter.prunable_linears(layer).items()}
        return [Target(index, names[id(u.consumer)], u.consumer, u) for u in adapter.units(layer)]

    def solves(self, update):
        return True

    def solve(self, targets, factors, ratio, opts, update):
        heads, neurons = (t.units for t in targets)
        total = sum(u.count * u.params for u in (heads, neurons))  # the layer's prunable weights
        n_units = min(heads.count - 1, round(ratio * heads.count))
        n_neurons = round((ratio * total - n_units * heads.params) / neurons.params)
        budget = {"heads": (n_units, constant(int(opts.head_batch))),
                  "neurons": (max(0, min(neurons.count - 1, n_neurons)),
                              shrinking(int(opts.ffn_group_size), int(opts.ffn_min_group_size)))}
        out = {}
        for t in targets:
            kron, W, (n, batches) = factors(t), t.linear.weight.data, budget[t.units.kind]
            if kron.dead is not None:
                W[:, kron.dead] = 0  # inputs that never fired: their weights never matter
            new, removed = batched_greedy(W, kron.Ainv(W), t.units.cols, n, batches, update == "obs")
            W.copy_(new.to(W.dtype))
            if removed:
                t.units.silence(removed)
            out[t.name] = {"units_removed": sorted(removed)} if t.units.kind == "heads" else {"neurons_removed": len(removed)}
        return out
