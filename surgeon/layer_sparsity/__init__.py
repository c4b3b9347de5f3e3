"""How the run's sparsity is spread over the decoder layers (`layer_sparsity=<name>`): uniform,
or OWL's outlier-weighted ratios (owl.py)."""
from surgeon.errors import SurgeonError
from surgeon.layer_sparsity.owl import Owl

KINDS = {"uniform": None, "owl": Owl}


def build(cfg):
    """None for uniform (the schedule's targets as they are), else the part that sets the ratios."""
    if cfg.name not in KINDS:
        raise SurgeonError(f"layer_sparsity '{cfg.name}' is not implemented (have: {', '.join(KINDS)})")
    return KINDS[cfg.name] and KINDS[cfg.name](cfg)


__all__ = ["KINDS", "Owl", "build"]
