"""Curvature backends, one file each, chosen by `curvature=<name>`."""
from surgeon.curvature.base import Curvature
from surgeon.curvature.diagonal import Diagonal
from surgeon.curvature.grouped_cholesky import GroupedCholesky
from surgeon.curvature.hessian import Hessian
from surgeon.curvature.identity import Identity
from surgeon.curvature.kfac import KFAC
from surgeon.curvature.kron import Kron
from surgeon.errors import SurgeonError

CURVATURES: dict[str, type[Curvature]] = {"identity": Identity, "diagonal": Diagonal, "hessian": Hessian,
                                          "kfac": KFAC, "grouped_cholesky": GroupedCholesky}


def backend(cfg) -> type[Curvature]:
    """The backend class of `curvature=<name>`, its options checked."""
    if cfg.name not in CURVATURES:
        raise SurgeonError(f"curvature '{cfg.name}' is not implemented (have: {', '.join(CURVATURES)})")
    cls = CURVATURES[cfg.name]
    cls.check(cfg)
    return cls


__all__ = ["CURVATURES", "Curvature", "Kron", "backend"]
