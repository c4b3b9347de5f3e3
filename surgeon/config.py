"""Config access and the checks that run before anything heavy is loaded."""
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from surgeon.data import corpora
from surgeon.errors import SurgeonError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "calibration", "eval", "curvature", "structure", "schedule", "method", "logger",
          "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def model_config(name: str) -> DictConfig:
    return OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")


FISHERS = ("empirical", "true")


def fisher_kind(cfg) -> str:
    """`curvature.fisher` as a name (here, not in the torch-importing curvature package, so the
    table tools can read it cheaply). YAML reads a bare `true` (as in `curvature.fisher=true`) as a
    boolean; compared with the string "true" it would silently give the empirical Fisher."""
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


def check(cfg: DictConfig) -> None:
    """Everything that can be checked without loading a model."""
    from surgeon import model as models
    from surgeon import schedule, structure
    from surgeon.eval import zero_shot
    from surgeon.method import TRAINED, Method

    if cfg.get("compact", "auto") not in ("auto", True, False):
        raise SurgeonError(f"compact must be auto, true or false, got {cfg.compact}")
    if not 0.0 <= float(cfg.sparsity) < 1.0:
        raise SurgeonError(f"sparsity must be in [0, 1), got {cfg.sparsity}")
    st = structure.build(cfg.structure)
    if cfg.structure.name not in cfg.method.structures:
        raise SurgeonError(f"method={cfg.method.name} cannot do structure={cfg.structure.name} "
                           f"(it can: {', '.join(cfg.method.structures)})")
    schedule.get(cfg.schedule.name)
    if cfg.method.name in TRAINED:
        TRAINED[cfg.method.name].check(cfg)
        method = None
    else:
        method = Method(cfg.method, cfg.curvature, st)
    if cfg.schedule.name == "incremental_ratio":
        if method.is_global:
            raise SurgeonError(f"schedule=incremental_ratio sets per-layer ratios; method={cfg.method.name} "
                               "decides globally (use schedule=linear or one_shot)")
        schedule.incremental_ratio.ratios(2, 0.5, cfg.schedule.curve)  # checks the curve name
    models.check(cfg.model)
    for name in [cfg.calibration.corpus, *cfg.eval.corpora]:
        corpora.check(name)
    zero_shot.check(cfg.eval)
    for key in ("num_samples", "seq_len"):
        if int(cfg.calibration[key]) < 1:
            raise SurgeonError(f"calibration.{key} must be positive, got {cfg.calibration[key]}")
