"""Reading the config tree, with nothing heavy imported (a leaf module: tables and plots use it
too): where conf/ is, the options of each group, the command-line check of group options, and
readers of options whose YAML form needs care."""
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from surgeon.errors import SurgeonError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "calibration", "eval", "curvature", "structure", "schedule", "method", "logger",
          "experiment")


def options(group: str) -> list[str]:
    """The group's options (a leading underscore marks a shared file, not an option)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def model_config(name: str) -> DictConfig:
    return OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")


FISHERS = ("empirical", "true")


def fisher_kind(cfg) -> str:
    """`curvature.fisher` as a name. YAML reads a bare `true` (as in `curvature.fisher=true`) as a
    boolean; compared with the string "true" it would silently give the empirical Fisher. Also
    reads the configs of older results.json, which may lack the key (then: empirical)."""
    value = cfg.get("fisher", "empirical")
    if isinstance(value, bool):
        value = "true" if value else "empirical"
    if value not in FISHERS:
        raise SurgeonError(f"curvature.fisher '{value}' is not one of {', '.join(FISHERS)}")
    return value


def check_overrides(argv: list[str]) -> None:
    """Unknown group options fail with one line (Hydra's own message spans a dozen)."""
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if not sep or key not in GROUPS:
            continue
        for option in value.split(","):
            if option and option not in ("null",) and option not in options(key):
                raise SurgeonError(f"unknown {key} '{option}' (choose from: {', '.join(options(key))})")


def check_output(argv: list[str]) -> None:
    """The folder runs will write to can be made: Hydra creates it (and opens run.log in it)
    before a run starts, and fails with a traceback where it cannot."""
    import os

    dirs = [value for key, _, value in (a.lstrip("+").partition("=") for a in argv)
            if key in ("hydra.run.dir", "hydra.sweep.dir") and value]
    for d in dirs or ["outputs"]:
        path = Path(d).absolute()
        while not path.exists():
            path = path.parent
        if not os.access(path, os.W_OK | os.X_OK):
            raise SurgeonError(f"cannot write run results under {path} (permissions): give a writable "
                               "hydra.run.dir (or hydra.sweep.dir for -m)")
