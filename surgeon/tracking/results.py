"""results.json: written atomically so a crash never leaves a half file that a sweep would
mistake for a finished run."""
import json
import os
import tempfile
from pathlib import Path


def write_json_atomic(path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def linear_record(layer: int, name: str, weight, **extra) -> dict:
    """One entry of results.json "layers": a linear's size and the fraction of it at zero."""
    return {"layer": layer, "name": name, "numel": weight.numel(),
            "sparsity": (weight == 0).float().mean().item(), **extra}


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB). In a multirun with the basic
    launcher all jobs share one process, so this is the peak so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
