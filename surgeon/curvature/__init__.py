"""Curvature backends, one file each, chosen by `curvature=<name>`."""
from surgeon.curvature.base import Curvature, robust_cholesky_inverse
from surgeon.curvature.diagonal import Diagonal
from surgeon.curvature.hessian import Hessian
from surgeon.curvature.identity import Identity

CURVATURES: dict[str, type[Curvature]] = {"identity": Identity, "diagonal": Diagonal, "hessian": Hessian}


def build(cfg, linear) -> Curvature:
    return CURVATURES[cfg.name](linear, cfg)


__all__ = ["CURVATURES", "Curvature", "build", "robust_cholesky_inverse"]
