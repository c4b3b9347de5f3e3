"""Schedules: how the target sparsity is reached (`schedule=<name>`)."""
from surgeon.errors import SurgeonError
from surgeon.schedule import incremental_ratio, linear, one_shot

SCHEDULES = {"one_shot": one_shot, "linear": linear, "incremental_ratio": incremental_ratio}


def get(name: str):
    if name not in SCHEDULES:
        raise SurgeonError(f"schedule '{name}' is not implemented yet (have: {', '.join(SCHEDULES)})")
    return SCHEDULES[name]
