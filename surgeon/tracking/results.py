"""results.json: the record of one run (the contract in DESIGN.md), with where it ran - the
commit, the package versions, the hardware - written atomically so a crash never leaves a half
file that a sweep would mistake for a finished run."""
import json
import os
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf

PACKAGES = ("torch", "transformers", "accelerate", "peft", "lm_eval", "hydra-core", "surgeon")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shareable(path, directory: bool = False) -> None:
    """The mode a plain open() would give (mkstemp / mkdtemp make files 0600, folders 0700)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_json_atomic(path, data) -> None:
    """Written to a temporary file beside it, then renamed: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
        shareable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(res: dict, out_dir: Path):
    """Writes `<out_dir>/results.json`. If that fails (the folder went away or became read-only
    during the run), the finished work is written to a fallback folder instead, and the returned
    SurgeonError says where; None when all went well."""
    from surgeon import assets
    from surgeon.errors import SurgeonError

    try:
        write_json_atomic(out_dir / "results.json", res)
        return None
    except OSError as e:
        fallback = assets.cache_dir("unsaved", f"{time.strftime('%Y%m%d-%H%M%S')}_{out_dir.name}") / "results.json"
        write_json_atomic(fallback, res)
        return SurgeonError(f"cannot write {out_dir / 'results.json'} ({e.strerror}); the results were "
                            f"written to {fallback}")


def saved_run(run: Path) -> dict:
    """The results of a run saved with `save=true` (its model in run/model), or a SurgeonError."""
    from surgeon.errors import SurgeonError

    if not (run / "model").is_dir():
        raise SurgeonError(f"{run} has no saved model: run it again with save=true")
    return json.loads((run / "results.json").read_text())


def linear_record(layer: int, name: str, weight, **extra) -> dict:
    """One entry of results.json "layers": a linear's size and the fraction of it at zero."""
    return {"layer": layer, "name": name, "numel": weight.numel(),
            "sparsity": (weight == 0).float().mean().item(), **extra}


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB). In a multirun with the basic
    launcher all jobs share one process, so this is the peak so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_START = {}  # what start_accounting saw: the code a process runs is the code it imported at its start


def start_accounting(device) -> None:
    """Peaks from here on: parameters on the compute device, accelerator memory; and the commit
    (an hour-long run, or a sweep's later jobs in the same process, must name the code it imported,
    not where the checkout has moved on to since)."""
    import torch

    from surgeon.model.placement import RESIDENT

    if "commit" not in _START:
        _START["commit"] = _git_commit()
    RESIDENT.reset()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory(model_bytes: int, device) -> dict:
    """What the run held: the model's parameter bytes, the peak bytes of them on the compute
    device at once (one layer plus the trunk for a layer-by-layer pass), the peak accelerator
    memory allocated (CUDA), and the peak resident host memory."""
    import torch

    from surgeon.model.placement import RESIDENT

    return {"model_param_bytes": model_bytes, "peak_device_param_bytes": RESIDENT.peak,
            "peak_accelerator_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            "peak_rss_mb": peak_rss_mb()}


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        # not a git checkout: an installed wheel, or a copy of the tree sent to another machine,
        # which names the commit it was copied from
        return os.environ.get("SURGEON_COMMIT")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device) -> dict:
    """Where and when a run ran: commit, package versions, CPU, cores, accelerator, and the UTC time
    it was recorded (what tables order duplicates by: file times change with every checkout)."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    commit = _START["commit"] if "commit" in _START else _git_commit()
    return {"commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime()),
            "python": platform.python_version(), "packages": versions,
            "cpu": _cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def record(plan, measured: dict, device) -> dict:
    """The results.json of a run: what it was (from its plan), what it measured, where it ran."""
    import torch

    cfg = plan.cfg
    return {
        "model": cfg.model.name, "method": cfg.method.name, "curvature": cfg.curvature.name,
        "structure": plan.structure.label, "schedule": cfg.schedule.name, "seed": int(cfg.seed),
        "layer_sparsity": cfg.layer_sparsity.name,
        "target_sparsity": plan.target, **measured,
        "peak_rss_mb": peak_rss_mb(), "device": str(device), "threads": torch.get_num_threads(),
        "environment": environment(device), "config": OmegaConf.to_container(cfg, resolve=True),
    }
