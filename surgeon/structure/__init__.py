"""Structures: what is removed together, chosen by `structure=<name>`."""
from surgeon.errors import SurgeonError
from surgeon.structure.base import Structure, Target
from surgeon.structure.experts import Experts
from surgeon.structure.heads_neurons import HeadsNeurons
from surgeon.structure.layers import Layers
from surgeon.structure.nm import NM
from surgeon.structure.rows_cols import RowsCols
from surgeon.structure.unstructured import Unstructured


def build(cfg) -> Structure:
    if cfg.name == "unstructured":
        return Unstructured()
    if cfg.name == "nm":
        return NM(int(cfg.n), int(cfg.m), cfg.fill, cfg.select)
    if cfg.name == "rows_cols":
        return RowsCols(bool(cfg.get("coupled", True)))
    if cfg.name == "heads_neurons":
        return HeadsNeurons()
    if cfg.name == "layers":
        return Layers(cfg.score)
    if cfg.name == "experts":
        return Experts(cfg.score)
    raise SurgeonError(f"structure '{cfg.name}' is not implemented")


__all__ = ["Experts", "HeadsNeurons", "Layers", "NM", "RowsCols", "Structure", "Target", "Unstructured", "build"]
