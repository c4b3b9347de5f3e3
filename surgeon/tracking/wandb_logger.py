"""`logger=wandb`: the same figures as results.json, offline by default (`wandb sync` uploads
later). Never prompts for a login: offline mode needs none, and online mode without an API key
falls back to offline with a warning.

The jobs of one sweep share a W&B group (the sweep folder, unless logger.group names one) and are
named by their folders (hydra.sweep.subdir); the config is flattened to dotted keys
("method.name"), which W&B's run table and parallel-coordinates views filter and group by.
results.json is logged as an artifact; `python -m surgeon.tables/plots ... --wandb` logs tables
and figures to the group."""
import logging
import os
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def _mode(mode: str) -> str:
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        log.warning("logger.mode=online but WANDB_API_KEY is unset: logging offline instead")
        return "offline"
    return mode


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _sweep() -> tuple[str | None, str | None]:
    """(group, job name) of a Hydra multirun job; (None, None) for a single run."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
    except ValueError:  # no Hydra context (called from Python)
        return None, None
    if hc.mode.name != "MULTIRUN":
        return None, None
    return str(hc.sweep.dir), Path(hc.runtime.output_dir).name  # the job's folder (hydra.sweep.subdir)


class WandbLogger:
    def __init__(self, cfg_logger, cfg, out_dir):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        group, name = _sweep()
        self.run = wandb.init(project=cfg_logger.project, entity=cfg_logger.get("entity"),
                              group=cfg_logger.get("group") or group, name=name, job_type=cfg.method.name,
                              tags=list(cfg_logger.get("tags") or []), mode=_mode(cfg_logger.mode),
                              dir=str(out_dir), reinit="finish_previous",
                              config=flatten(OmegaConf.to_container(cfg, resolve=True)),
                              settings=wandb.Settings(console="off", silent=True))
        self.out_dir = Path(out_dir)

    def log(self, data: dict) -> None:
        self.run.log(data)

    def summary(self, data: dict) -> None:
        self.run.summary.update(data)

    def finish(self) -> None:
        results = self.out_dir / "results.json"
        if results.exists():
            log_files(self.run, f"results-{self.run.id}", "results", [results])
        self.run.finish()


def log_files(run, name: str, kind: str, paths) -> None:
    import wandb

    art = wandb.Artifact(name, type=kind)
    for p in paths:
        art.add_file(str(p), name=Path(p).name)
    run.log_artifact(art)


def log_outputs(group: str, kind: str, paths, project: str = "surgeon", mode: str = "offline") -> Path:
    """Logs tables or figures as one artifact of a `kind` run in `group` (the sweep's); returns
    the folder the offline run was written to."""
    import wandb

    paths = list(paths)
    root = Path(paths[0]).parent
    run = wandb.init(project=project, group=group, job_type=kind, name=f"{kind} {group}", mode=_mode(mode),
                     dir=str(root), reinit="finish_previous", settings=wandb.Settings(console="off", silent=True))
    log_files(run, f"{kind}-{run.id}", kind, paths)
    run.finish()
    return root / "wandb"


class NoLogger:
    def log(self, data):
        pass

    def summary(self, data):
        pass

    def finish(self):
        pass


def build(cfg_logger, cfg, out_dir):
    return WandbLogger(cfg_logger, cfg, out_dir) if cfg_logger.name == "wandb" else NoLogger()
