"""Schedules: how the target sparsity is reached (`schedule=<name>`)."""
from surgeon.errors import SurgeonError
from surgeon.schedule.base import Schedule
from surgeon.schedule.incremental_ratio import IncrementalRatio
from surgeon.schedule.linear import Linear
from surgeon.schedule.one_shot import OneShot

SCHEDULES = {"one_shot": OneShot, "linear": Linear, "incremental_ratio": IncrementalRatio}


def build(cfg) -> Schedule:
    if cfg.name not in SCHEDULES:
        raise SurgeonError(f"schedule '{cfg.name}' is not implemented (have: {', '.join(SCHEDULES)})")
    return SCHEDULES[cfg.name](cfg)


__all__ = ["SCHEDULES", "Schedule", "build"]
