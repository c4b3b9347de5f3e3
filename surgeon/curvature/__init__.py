"""Curvature backends, one file each, chosen by `curvature=<name>`."""
from surgeon.curvature.base import Curvature, robust_cholesky_inverse
from surgeon.curvature.diagonal import Diagonal
from surgeon.curvature.grouped_cholesky import GroupedCholesky
from surgeon.curvature.hessian import Hessian
from surgeon.curvature.identity import Identity
from surgeon.curvature.kfac import KFAC

CURVATURES: dict[str, type[Curvature]] = {"identity": Identity, "diagonal": Diagonal, "hessian": Hessian,
                                        "kfac": KFAC,
                                        "grouped_cholesky": GroupedCholesky}


def build(cfg, linear) -> Curvature:
    return CURVATURES[cfg.name](linear, cfg)


def needs_gradients(cfg) -> bool:
    return CURVATURES[cfg.name].uses_gradients(cfg)


__all__ = ["CURVATURES", "Curvature", "build", "robust_cholesky_inverse"]
