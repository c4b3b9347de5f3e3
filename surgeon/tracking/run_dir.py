"""A run's folder: one run at a time, resume only what matches, nothing lost.

`claim(out_dir, cfg)` takes the folder's lock (an flock on `.surgeon.lock`, released when the
process ends, however it ends: a second run started in the same folder is refused at once), then:
- no results.json yet: the run goes ahead;
- results.json of the same run (the resolved config's fingerprint, leaving out where results go
  and how they are logged: `resume`, `threads`, `logger`): skipped, with a line saying so;
- results.json of a different run: refused in one line naming what differs;
- `resume=false`: the run goes ahead, and the previous results.json, model/ and .hydra/ are
  moved to `previous-<time>/` first, so nothing a user made is overwritten.
Only a run that goes ahead writes `.hydra/` (config, overrides, Hydra's config): the folder always
describes the run whose results it holds (Hydra's own copy is off: `hydra.output_subdir: null`).
"""
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from omegaconf import OmegaConf

from surgeon.errors import SurgeonError

LOCK = ".surgeon.lock"
NOT_THE_RUN = ("resume", "threads", "logger")  # how results are kept and logged, not what they are


def fingerprint(config: dict) -> str:
    kept = {k: v for k, v in config.items() if k not in NOT_THE_RUN}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        if prefix == "" and key in NOT_THE_RUN:
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}: {x} there, {y} here")
    return out


class Claim:
    """The held folder; `skip` says the run is already there."""

    def __init__(self, out_dir: Path, fd: int, skip: bool):
        self.out_dir, self.fd, self.skip = out_dir, fd, skip

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def claim(out_dir: Path, cfg, hydra_cfg=None) -> Claim:
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise SurgeonError(f"cannot write to the run folder {out_dir} ({e.strerror}): choose another "
                           "hydra.run.dir (or hydra.sweep.dir)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SurgeonError(f"another run (pid {holder}) is using {out_dir}: wait for it to finish, "
                           "or give this run another hydra.run.dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    here = OmegaConf.to_container(cfg, resolve=True)
    done = out_dir / "results.json"
    try:
        if done.exists():
            there = json.loads(done.read_text()).get("config", {})
            if not cfg.resume:
                _move_aside(out_dir)
            elif fingerprint(there) == fingerprint(here):
                return Claim(out_dir, fd, skip=True)
            else:
                diff = "; ".join(_differences(there, here)[:3])
                raise SurgeonError(f"{out_dir} holds the results of a different run ({diff}): give this run "
                                   "another hydra.run.dir, or resume=false to run it there (the old results "
                                   "are kept in previous-<time>/)")
        _describe(out_dir, cfg, hydra_cfg)
    except BaseException:
        os.close(fd)
        raise
    return Claim(out_dir, fd, skip=False)


def _move_aside(out_dir: Path) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime((out_dir / "results.json").stat().st_mtime))
    keep = out_dir / f"previous-{stamp}"
    keep.mkdir(exist_ok=True)
    for name in ("results.json", "model", ".hydra"):
        if (out_dir / name).exists():
            os.replace(out_dir / name, keep / name)


def _describe(out_dir: Path, cfg, hydra_cfg) -> None:
    """`.hydra/`: the config and overrides of the run that is about to write results here."""
    folder = out_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    if hydra_cfg is not None:
        OmegaConf.save(hydra_cfg.overrides.task, folder / "overrides.yaml")
