"""`structure=heads_neurons`: whole attention units and FFN neurons, the structures that make a
model physically smaller (SlimGPT). An attention unit is a KV group - one K/V head and the query
heads that read it (a plain head without GQA); removing it drops its q/k/v rows and o columns.
An FFN neuron drops a row of every input linear (gate/up or fc1) and a column of the output one.

Per layer, `ratio` of the attention units is removed (rounded, at least one unit is kept) and
as many FFN neurons as bring the layer's removed parameters to `ratio` of its prunable ones.
Decisions are made on the output linears' input columns (o_proj, down_proj); see
surgeon/method/batched_greedy.py."""


class HeadsNeurons:
    name = "heads_neurons"
    period = None

    def check(self, in_features: int) -> None:
        pass

    def target(self, sparsity: float) -> float:
        return sparsity

    def select(self, costs, sparsity, scope="layer"):
        raise ValueError("structure=heads_neurons is decided per decoder layer, not per element")
