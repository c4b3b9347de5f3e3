"""Reading the config tree, with nothing heavy imported (a leaf module: tables and plots use it
too): where conf/ is, the options of each group, the command-line check of group options, and
readers of options whose YAML form needs care."""
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from surgeon.errors import SurgeonError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "calibration", "eval", "curvature", "structure", "schedule", "layer_sparsity", "recovery",
          "method", "logger", "experiment")


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
    before a run starts, and fails with a traceback where it cannot. Tried, not inferred from
    permission bits (which root ignores, and read-only file systems do not show)."""
    import tempfile

    dirs = [value for key, _, value in (a.lstrip("+").partition("=") for a in argv)
            if key in ("hydra.run.dir", "hydra.sweep.dir") and value]
    for d in dirs or ["outputs"]:
        path = Path(d).absolute()
        while not path.exists():
            path = path.parent
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            raise SurgeonError(f"cannot write run results under {path} ({e.strerror}): give a writable "
                               "hydra.run.dir (or hydra.sweep.dir for -m)") from None


def check_composes(argv: list[str]) -> None:
    """The command line's overrides compose (Hydra's own message for a key that is not in the
    config spans six lines and a hint)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    overrides = [a for a in argv if not a.startswith("-") and not a.lstrip("+").startswith("hydra")]
    if any("," in a.partition("=")[2] for a in overrides):
        return  # a sweep's lists: each job composes on its own
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            compose("config", overrides=overrides)
    except HydraException as e:
        cause = e.__cause__
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = f": {str(cause).splitlines()[0]}" if cause is not None and str(cause).strip() else ""
        raise SurgeonError(f"{lines[0].rstrip('.')}{why}" + "".join(f" ({ln})" for ln in lines[1:2])) from None


def require_counts(section, name: str, positive=(), nonnegative=(), why: dict | None = None) -> None:
    """Integer options of `section` (called `name` on the command line) that must be >= 1 or >= 0:
    one line naming the first that is not (`why`: what a 0 means, where it means something)."""
    for keys, low in ((positive, 1), (nonnegative, 0)):
        for key in keys:
            if int(section[key]) < low:
                note = f" ({why[key]})" if why and key in why else ""
                raise SurgeonError(f"{name}.{key} must be {'positive' if low else '>= 0'}{note}, got {section[key]}")
