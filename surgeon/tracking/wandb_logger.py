"""`logger=wandb`: the same figures as results.json, offline by default (`wandb sync` uploads
later). Never prompts for a login: offline mode needs none, and online mode without an API key
falls back to offline with a warning."""
import logging
import os

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class WandbLogger:
    def __init__(self, cfg_logger, cfg, out_dir):
        import wandb

        mode = cfg_logger.mode
        if mode == "online" and not os.environ.get("WANDB_API_KEY"):
            log.warning("logger.mode=online but WANDB_API_KEY is unset: logging offline instead")
            mode = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=cfg_logger.project, entity=cfg_logger.get("entity"),
                              group=cfg_logger.get("group"), tags=list(cfg_logger.get("tags") or []),
                              mode=mode, dir=str(out_dir), reinit="finish_previous",
                              config=OmegaConf.to_container(cfg, resolve=True),
                              settings=wandb.Settings(console="off", silent=True))

    def log(self, data: dict) -> None:
        self.run.log(data)

    def summary(self, data: dict) -> None:
        self.run.summary.update(data)

    def finish(self) -> None:
        self.run.finish()


class NoLogger:
    def log(self, data):
        pass

    def summary(self, data):
        pass

    def finish(self):
        pass


def build(cfg_logger, cfg, out_dir):
    return WandbLogger(cfg_logger, cfg, out_dir) if cfg_logger.name == "wandb" else NoLogger()
