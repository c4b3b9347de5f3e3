"""Mixture-of-experts FFNs for the adapters of MoE families (Mixtral, Qwen2-MoE, Qwen3-MoE).

transformers 5 packs a layer's experts into two 3-D parameters (gate_up_proj: experts x 2I x H,
down_proj: experts x H x I). `Experts` holds the same weights as one gate, up and down
`nn.Linear` per expert and routes as the packed module does, so every expert's linears are
ordinary prunable linears whose statistics see exactly the tokens routed to that expert; the
state dict (hence `save_pretrained`) keeps the packed layout, so a saved model is a plain
checkpoint of its family. `Usage` observes the routing (which tokens reach each expert, with what
gate weight, and how large the expert's output is); `keep` drops whole experts.
"""
from collections import OrderedDict

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from surgeon.model.adapters.base import Mlp


class Expert(nn.Module):
    def __init__(self, gate: nn.Linear, up: nn.Linear, down: nn.Linear):
        super().__init__()
        self.gate, self.up, self.down = gate, up, down


def _linear(W: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(W.shape[1], W.shape[0], bias=False, device=W.device, dtype=W.dtype)
    lin.weight.data.copy_(W)
    return lin


class Experts(nn.Module):
    """A packed experts module as one module per expert; same call, same routing."""

    def __init__(self, packed: nn.Module):
        super().__init__()
        self.act_fn = packed.act_fn
        inter = packed.gate_up_proj.shape[1] // 2
        self.experts = nn.ModuleList(
            Expert(_linear(gu[:inter]), _linear(gu[inter:]), _linear(d))
            for gu, d in zip(packed.gate_up_proj.data, packed.down_proj.data))
        self.num_experts = len(self.experts)
        self.dense_count = self.num_experts  # before any expert was removed (multi-shot counts from it)
        self.ids = list(range(self.num_experts))  # each present expert's index in the dense model
        self._observers = OrderedDict()
        self._register_state_dict_hook(Experts._pack)
        self._register_load_state_dict_pre_hook(self._unpack)

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for e, ex in enumerate(self.experts):
            tokens, slot = torch.where(top_k_index == e)
            if tokens.numel() == 0:
                continue
            x, g = hidden_states[tokens], top_k_weights[tokens, slot, None]
            y = ex.down(self.act_fn(ex.gate(x)) * ex.up(x))
            for observe in self._observers.values():
                observe(e, y, g)
            out.index_add_(0, tokens, (y * g).to(out.dtype))
        return out

    def observe(self, fn) -> RemovableHandle:
        """Calls fn(expert, outputs, gate weights) for each expert's routed tokens in every forward."""
        handle = RemovableHandle(self._observers)
        self._observers[handle.id] = fn
        return handle

    def keep(self, indices: list[int]) -> None:
        """Keeps experts `indices` (in order); the router's rows are the adapter's to match."""
        self.experts = nn.ModuleList(self.experts[i] for i in indices)
        self.ids = [self.ids[i] for i in indices]
        self.num_experts = len(self.experts)

    def mlps(self) -> list[Mlp]:
        return [Mlp([ex.gate, ex.up], ex.down) for ex in self.experts]

    @staticmethod
    def _pack(module, state, prefix, meta):
        keys = [k for k in list(state) if k.startswith(f"{prefix}experts.")]
        if not keys:
            return state
        n = module.num_experts
        part = {name: [state.pop(f"{prefix}experts.{e}.{name}.weight") for e in range(n)] for name in ("gate", "up", "down")}
        state[f"{prefix}gate_up_proj"] = torch.stack([torch.cat([g, u]) for g, u in zip(part["gate"], part["up"])])
        state[f"{prefix}down_proj"] = torch.stack(part["down"])
        return state

    def _unpack(self, state, prefix, meta, strict, missing, unexpected, errors):
        if f"{prefix}gate_up_proj" in state:
            gate_up, down = state.pop(f"{prefix}gate_up_proj"), state.pop(f"{prefix}down_proj")
            for e, ex in enumerate(self.experts):
                inter = ex.gate.out_features
                state[f"{prefix}experts.{e}.gate.weight"] = gate_up[e, :inter]
                state[f"{prefix}experts.{e}.up.weight"] = gate_up[e, inter:]
                state[f"{prefix}experts.{e}.down.weight"] = down[e]


class Usage:
    """What the router sends to each expert of one layer, over the calibration tokens T:
    routed[e] = |T_e| (the tokens whose top-k holds e) and gated_norm[e] = sum over T_e of
    g_e(x) ||E_e(x)||_2 (the gate weight times the length of the expert's output)."""

    def __init__(self, experts: Experts):
        self.experts, n = experts, experts.num_experts
        self.tokens = 0
        self.routed = torch.zeros(n, dtype=torch.long)
        self.gated_norm = torch.zeros(n, dtype=torch.float64)

    def hooks(self) -> list:
        def count(module, args, kwargs):
            self.tokens += (args[0] if args else kwargs["hidden_states"]).shape[0]

        def observe(e, y, g):
            self.routed[e] += y.shape[0]
            self.gated_norm[e] += float((g.double().squeeze(-1) * y.double().norm(dim=-1)).sum())

        return [self.experts.register_forward_pre_hook(count, with_kwargs=True), self.experts.observe(observe)]


def unpack(moe_block: nn.Module) -> None:
    """Replaces the block's packed experts by `Experts` (once; later calls find it in place)."""
    if not isinstance(moe_block.experts, Experts):
        moe_block.experts = Experts(moe_block.experts)
