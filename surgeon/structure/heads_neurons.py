"""`structure=heads_neurons`: whole attention units and FFN neurons, the structures that make a
model physically smaller (SlimGPT). An attention unit is a KV group - one K/V head and the query
heads that read it (a plain head without GQA); removing it drops its q/k/v rows and o columns.
An FFN neuron drops a row of every input linear (gate/up or fc1) and a column of the output one.

Per layer, `ratio` of the attention units is removed (rounded, at least one unit is kept) and
as many FFN neurons as bring the layer's removed parameters to `ratio` of its prunable ones.
Decisions are made on the output linears' input columns (o_proj, down_proj); see
surgeon/method/batched_greedy.py."""
from surgeon.structure.base import Structure


class HeadsNeurons(Structure):
    name = "heads_neurons"
    decided_by = "per decoder layer"
