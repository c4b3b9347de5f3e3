"""The architecture adapter: the only code that knows Hugging Face module and config names.

Everything else asks an adapter, and nothing else:
- the decoder layers, the embeddings, and which prunable linears of a layer read the same input
  (q/k/v; gate/up), so their statistics are collected once;
- the removable units of a layer (`Units`): attention units (a KV group: one K/V head and the
  query heads that read it; a plain head without GQA) and FFN neurons, as column groups of the
  linear that reads them and row groups of the linears that compute them - their sizes and
  parameter counts follow from that;
- the residual stream's hidden dimensions: who writes them, who reads them, which norms see them;
- how to resize a layer or the hidden width once units are gone, and how to say so in the config.
Supporting a new decoder family is one subclass that fills in `attention` and `mlp`.
"""
from dataclasses import dataclass

import torch
from torch import nn


ROLES = ("q", "k", "v", "o", "ffn_in", "ffn_out")  # the linears of a layer, by what they do


@dataclass
class Attention:
    """The projections of one attention block and its head geometry (GQA: heads share KV)."""
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass
class Mlp:
    """`inputs` map the hidden state to the FFN neurons (gate/up or fc1); `output` maps back."""
    inputs: list[nn.Linear]
    output: nn.Linear


@dataclass
class Units:
    """One family of removable units of a decoder layer. Unit i is what columns `cols[i]` of the
    `consumer` read, computed by rows `rows[j][i]` of each `producers[j]`. It adds nothing to the
    layer once those consumer columns are zero, or the rows (and bias) of any producer listed in
    `silencers` are: a zero value head contributes zero, and SiLU, GELU and ReLU map 0 to 0."""
    kind: str                    # "heads" or "neurons"
    consumer: nn.Linear
    cols: torch.Tensor           # (count, width): the consumer's input columns of each unit
    producers: list[nn.Linear]
    rows: list[torch.Tensor]     # per producer: (count, rows): its output rows of each unit
    silencers: list[int]         # indices into producers
    per_unit: int = 1            # structures per unit: the query heads of a KV group

    @property
    def count(self) -> int:
        return self.cols.shape[0]

    @property
    def params(self) -> int:
        """Weights of one unit: its consumer columns and its producer rows."""
        return self.cols.shape[1] * self.consumer.out_features + sum(
            r.shape[1] * p.in_features for p, r in zip(self.producers, self.rows))

    @property
    def width(self) -> int:
        """Weights of one unit per hidden dimension (every linear here spans the hidden size once)."""
        return self.cols.shape[1] + sum(r.shape[1] for r in self.rows)

    @torch.no_grad()
    def silence(self, removed) -> None:
        """Zeroes the producer rows (weight and bias) of the `removed` units, so compaction reads
        them as dead; their consumer columns are the caller's to set."""
        for lin, rows in zip(self.producers, self.rows):
            zero_rows(lin, rows[removed].flatten())


class Adapter:
    model_types: tuple[str, ...] = ()
    ffn_config_key = "intermediate_size"  # the config field of the FFN width
    # Hidden dimensions can be dropped exactly only where every norm over them is an RMSNorm
    # fed by the residual stream (a zero dimension changes no statistic but the count d).
    hidden_prunable = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # -- subclasses fill these in --------------------------------------------------------------
    def decoder(self) -> nn.Module:
        """The module that owns `layers` (and the embeddings / final norm)."""
        return self.model.model

    def attention(self, layer: nn.Module) -> Attention:
        raise NotImplementedError

    def mlp(self, layer: nn.Module) -> Mlp:
        raise NotImplementedError

    def mlps(self, layer: nn.Module) -> list[Mlp]:
        """Every FFN of the layer: one, or each expert of a mixture (and a shared expert)."""
        return [self.mlp(layer)]

    def experts(self, layer: nn.Module):
        """The layer's routed experts (surgeon/model/adapters/experts.py `Experts`), or None for a
        dense FFN."""
        return None

    def experts_per_token(self) -> int:
        """How many experts the router picks for each token (mixtures only)."""
        raise NotImplementedError

    def drop_experts(self, layer: nn.Module, keep: list[int]) -> None:
        """Keeps routed experts `keep` of `layer`, with their router rows (mixtures only)."""
        raise NotImplementedError

    def hidden_norms(self) -> list[nn.Module]:
        """Every norm over the hidden dimension (hidden_prunable adapters only)."""
        raise NotImplementedError

    # -- what the rest of the code asks --------------------------------------------------------
    def embeddings(self) -> nn.Embedding:
        return self.decoder().embed_tokens

    def layers(self) -> nn.ModuleList:
        return self.decoder().layers

    def prunable_linears(self, layer: nn.Module) -> dict[str, nn.Linear]:
        """The decoder layer's linears, by their name inside the layer, in forward order."""
        names = {id(m): n for n, m in layer.named_modules()}
        return {names[id(m)]: m for group in self._input_groups(layer) for m in group}

    def input_groups(self, layer: nn.Module) -> list[list[str]]:
        """Names of the prunable linears that read one input, a list per input, in forward order."""
        names = {id(m): n for n, m in layer.named_modules()}
        return [[names[id(m)] for m in group] for group in self._input_groups(layer)]

    def _input_groups(self, layer) -> list[list[nn.Linear]]:
        att = self.attention(layer)
        return [[att.q, att.k, att.v], [att.o]] + [g for mlp in self.mlps(layer) for g in (list(mlp.inputs), [mlp.output])]

    def prunable_parameters(self) -> int:
        return sum(lin.weight.numel() for layer in self.layers()
                   for lin in self.prunable_linears(layer).values())

    def nonzero_prunable_parameters(self) -> int:
        return sum(int((lin.weight != 0).sum()) for layer in self.layers()
                   for lin in self.prunable_linears(layer).values())

    def units(self, layer: nn.Module) -> list[Units]:
        """The layer's attention units and FFN neurons (kind "neurons"; per FFN of a mixture,
        "neurons", "neurons1", ...)."""
        att = self.attention(layer)
        rep, hd = att.num_heads // att.num_kv_heads, att.head_dim
        q_rows = torch.arange(att.num_heads * hd).view(att.num_kv_heads, rep * hd)
        kv_rows = torch.arange(att.num_kv_heads * hd).view(att.num_kv_heads, hd)
        units = [Units("heads", att.o, q_rows, [att.q, att.k, att.v], [q_rows, kv_rows, kv_rows], [2], rep)]
        for e, mlp in enumerate(self.mlps(layer)):
            neurons = torch.arange(mlp.output.in_features).view(-1, 1)
            units.append(Units(f"neurons{e or ''}", mlp.output, neurons, list(mlp.inputs), [neurons] * len(mlp.inputs),
                               list(range(len(mlp.inputs)))))
        return units

    def channels(self, layer: nn.Module) -> list[Units]:
        """The layer's single channels, as `Units` of one producer row each: value channel (g, j)
        (row j of K/V group g's value head, read by column j of each query head of the group in
        the output projection, kind "values") and each FFN neuron. A row/column structure frees
        the rest of a channel once one slice of it is gone."""
        att = self.attention(layer)
        rep, hd = att.num_heads // att.num_kv_heads, att.head_dim
        v_rows = torch.arange(att.num_kv_heads * hd).view(-1, 1)
        heads = torch.arange(att.num_heads).view(att.num_kv_heads, 1, rep)
        o_cols = (heads * hd + torch.arange(hd).view(1, hd, 1)).reshape(-1, rep)  # (g, j) -> its rep columns
        values = Units("values", att.o, o_cols, [att.v], [v_rows], [0], rep)
        return [values] + [u for u in self.units(layer) if u.kind.startswith("neurons")]

    def linear_names(self, layer: nn.Module, roles) -> list[str]:
        """Module names (in the whole model) of a layer's linears by role (ROLES) - what peft's
        LoRA `target_modules` takes."""
        att, mlps = self.attention(layer), self.mlps(layer)
        by_role = dict(zip(ROLES, ([att.q], [att.k], [att.v], [att.o], [i for m in mlps for i in m.inputs],
                                   [m.output for m in mlps])))
        names = {m: n for n, m in self.model.named_modules()}
        return [names[lin] for role in roles for lin in by_role[role]]

    # -- the residual stream (hidden dimensions) -----------------------------------------------
    def hidden_writers(self, layer: nn.Module) -> list[nn.Linear]:
        """The linears that add to the residual stream (their rows are hidden dimensions)."""
        return [self.attention(layer).o, *(m.output for m in self.mlps(layer))]

    def hidden_readers(self, layer: nn.Module) -> list[nn.Linear]:
        """The linears that read the (normed) residual stream (their columns are hidden dimensions)."""
        att = self.attention(layer)
        return [att.q, att.k, att.v, *(i for m in self.mlps(layer) for i in m.inputs)]

    def max_positions(self) -> int | None:
        """The longest window the model was built for (None: no limit stated)."""
        return getattr(self.config, "max_position_embeddings", None)

    def hidden_multiple(self) -> int:
        """transformers' configs want the hidden size to divide by the head count."""
        return self.config.num_attention_heads

    # -- resizing (compaction) -----------------------------------------------------------------
    def layers_droppable(self) -> bool:
        """Whether a layer whose residual writers are zero hands its input on unchanged (pre-norm:
        the norms sit inside the branches), so compaction may drop it."""
        return True

    def drop_layers(self, keep: list[int]) -> None:
        """Keeps decoder layers `keep` (in order): the module list, the layer indices the KV cache
        is keyed by, and the config's layer count and per-layer types (sliding / full attention)."""
        old = self.layers()
        self.decoder().layers = nn.ModuleList([old[i] for i in keep])
        for j, layer in enumerate(self.layers()):
            for m in layer.modules():
                if isinstance(getattr(m, "layer_idx", None), int):
                    m.layer_idx = j
        types = getattr(self.config, "layer_types", None)
        if isinstance(types, (list, tuple)) and len(types) == len(old):
            self.config.layer_types = [types[i] for i in keep]
        self.config.num_hidden_layers = len(keep)

    @torch.no_grad()
    def resize(self, layer: nn.Module, keep: dict[str, torch.Tensor]) -> dict:
        """Keeps only the units `keep[kind]` (indices) of `layer`; returns its new shape."""
        for units in self.units(layer):
            idx = keep[units.kind]
            if len(idx) == units.count:  # all kept: nothing to slice
                continue
            for lin, rows in zip(units.producers, units.rows):
                replace(layer, lin, sliced(lin, rows=rows[idx].flatten()))
            replace(layer, units.consumer, sliced(units.consumer, cols=units.cols[idx].flatten()))
        att = self.attention(layer)  # the new projections' geometry
        self.set_head_counts(layer, att.num_heads, att.num_kv_heads)
        return {"num_heads": att.num_heads, "num_kv_heads": att.num_kv_heads, "ffn": len(keep["neurons"])}

    def set_head_counts(self, layer: nn.Module, heads: int, kv_heads: int) -> None:
        """Attention modules that keep head counts as attributes get the new ones."""
        attn = layer.self_attn
        for name, value in (("num_heads", heads), ("num_attention_heads", heads),
                            ("num_key_value_heads", kv_heads), ("num_kv_heads", kv_heads)):
            if isinstance(getattr(attn, name, None), int):
                setattr(attn, name, value)

    @torch.no_grad()
    def shrink_hidden(self, keep: torch.Tensor) -> None:
        """Keeps hidden dimensions `keep` everywhere: embeddings, every reader's columns, every
        writer's rows, the head. Each norm keeps its output by scaling its weight by sqrt(d / d')
        and its epsilon by d / d' (its mean runs over d' dimensions, not d)."""
        d, d_new = self.embeddings().weight.shape[1], len(keep)
        old = self.embeddings()
        emb = nn.Embedding(old.num_embeddings, d_new, padding_idx=old.padding_idx, device=old.weight.device,
                           dtype=old.weight.dtype)
        emb.weight.copy_(old.weight[:, keep])
        self.decoder().embed_tokens = emb
        for layer in self.layers():
            for lin in self.hidden_readers(layer):
                replace(layer, lin, sliced(lin, cols=keep))
            for lin in self.hidden_writers(layer):
                replace(layer, lin, sliced(lin, rows=keep))
        for norm in self.hidden_norms():
            norm.weight = nn.Parameter(norm.weight.data[keep] * (d / d_new) ** 0.5)
            norm.variance_epsilon *= d / d_new
        head = sliced(self.model.get_output_embeddings(), cols=keep)
        if getattr(self.config, "tie_word_embeddings", False):
            head.weight = emb.weight
        self.model.set_output_embeddings(head)
        self.config.head_dim = self.attention(self.layers()[0]).head_dim  # no longer hidden / heads
        self.config.rms_norm_eps *= d / d_new
        self.config.hidden_size = d_new

    def describe(self, shapes: list[dict]) -> bool:
        """Records per-layer shapes in the config (`surgeon_layer_shapes`) and, when transformers
        can build every layer from the config's own fields (uniform shapes; explicit head_dim, or
        head counts unchanged), sets those fields too. Returns whether it could."""
        cfg = self.config
        cfg.surgeon_layer_shapes = shapes
        uniform = all(s == shapes[0] for s in shapes)
        heads_same = shapes[0]["num_heads"] == cfg.num_attention_heads
        explicit_head_dim = getattr(cfg, "head_dim", None) is not None
        divides = cfg.hidden_size % shapes[0]["num_heads"] == 0  # transformers' configs check this
        native = uniform and (heads_same or explicit_head_dim) and divides
        if native:
            cfg.num_attention_heads = shapes[0]["num_heads"]
            if hasattr(cfg, "num_key_value_heads"):
                cfg.num_key_value_heads = shapes[0]["num_kv_heads"]
            if shapes[0]["ffn"] is not None:  # None: widths the config does not hold (experts)
                setattr(cfg, self.ffn_config_key, shapes[0]["ffn"])
        cfg.surgeon_native = native
        return native

    def tied_keys(self) -> set[str]:
        """State-dict keys a checkpoint leaves out because they are tied to the embeddings."""
        return {"lm_head.weight"} if getattr(self.config, "tie_word_embeddings", False) else set()


def attention_geometry(config, q: nn.Linear, k: nn.Linear) -> tuple[int, int, int]:
    """(heads, kv heads, head_dim) of one layer, read from its projections' shapes: after
    compaction layers may have fewer heads than the config says."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return q.out_features // head_dim, k.out_features // head_dim, head_dim


def sliced(lin: nn.Linear, rows=None, cols=None) -> nn.Linear:
    """A new linear holding rows `rows` (with their bias) and columns `cols` of `lin`."""
    W = lin.weight.data
    W = W if rows is None else W[rows]
    W = W if cols is None else W[:, cols]
    new = nn.Linear(W.shape[1], W.shape[0], bias=lin.bias is not None, device=W.device, dtype=W.dtype)
    new.weight.data.copy_(W)
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.data if rows is None else lin.bias.data[rows])
    return new


def zero_rows(lin: nn.Linear, rows) -> None:
    lin.weight.data[rows] = 0.0
    if lin.bias is not None:
        lin.bias.data[rows] = 0.0


def replace(layer: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in layer.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise ValueError("module not found in layer")
