"""The run plan: every option of a run checked, and every part built, once, before any model loads.

Building the plan is the validation. Each part checks its own options as it is built (the
structure, the schedule, the method with its curvature backend and update rule); what spans
parts or belongs to no part is checked here. A bad option fails with one line (SurgeonError) in
a second, not after minutes of work; `surgeon.run.execute` then only carries the plan out.
"""
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from surgeon import layer_sparsity as layer_sparsities
from surgeon import method as methods
from surgeon import recovery
from surgeon import schedule as schedules
from surgeon import structure as structures
from surgeon.data import corpora
from surgeon.config import require_counts
from surgeon.errors import SurgeonError
from surgeon.eval import zero_shot
from surgeon.model.load import check as check_model
from surgeon.structure import Structure

LOGGER_MODES = ("offline", "online", "disabled")


@dataclass
class Plan:
    cfg: DictConfig
    structure: Structure
    schedule: schedules.Schedule
    method: object          # surgeon.method.Method or Compresso: the same calls
    target: float           # the sparsity the run reaches (N:M fixes it)
    compact: bool           # shrink the weight shapes after pruning
    layer_sparsity: object = None  # None: uniform; else sets each decoder layer's ratio (OWL)
    semi_structured: bool = False  # time the 2:4 model with sparse kernels at the end


    @property
    def needs_data(self) -> bool:
        """Whether the run reads calibration windows."""
        return self.method.needs_data or bool(self.layer_sparsity and self.layer_sparsity.needs_data)


def build(cfg: DictConfig) -> Plan:
    missing = _missing(cfg)
    if missing:
        raise SurgeonError(f"{missing[0]} is required and has no default: add {missing[0]}=... to the command line")
    _check_run(cfg)
    structure = structures.build(cfg.structure)
    if cfg.structure.name not in cfg.method.structures:
        raise SurgeonError(f"method={cfg.method.name} cannot do structure={cfg.structure.name} "
                           f"(it can: {', '.join(cfg.method.structures)})")
    schedule = schedules.build(cfg.schedule)
    method = methods.build(cfg, structure, schedule)
    if schedule.per_layer and method.whole_model:
        raise SurgeonError(f"schedule={cfg.schedule.name} sets per-layer ratios; method={cfg.method.name} "
                           "decides globally (use schedule=linear or one_shot)")
    if schedule.per_layer and not structure.layer_ratios:
        raise SurgeonError(f"schedule={cfg.schedule.name} sets per-layer ratios; structure={cfg.structure.name} "
                           "needs the same ratio in every layer (use schedule=linear or one_shot)")
    if schedule.per_layer and structure.fixed_sparsity:
        raise SurgeonError(f"structure={cfg.structure.name} fixes every layer's sparsity; "
                           f"schedule={cfg.schedule.name} cannot set per-layer ratios")
    layer_sparsity = layer_sparsities.build(cfg.layer_sparsity)
    if layer_sparsity is not None:
        why = (f"method={cfg.method.name} learns its own masks" if not isinstance(method, methods.Method) else
               "the method decides globally" if method.whole_model else
               f"schedule={cfg.schedule.name} sets per-layer ratios itself" if schedule.per_layer else
               f"structure={cfg.structure.name} fixes every layer's sparsity" if structure.fixed_sparsity else
               f"structure={cfg.structure.name} needs the same ratio in every layer" if not structure.layer_ratios
               else None)
        if why:
            raise SurgeonError(f"layer_sparsity={cfg.layer_sparsity.name} sets per-layer ratios; {why} "
                               "(use layer_sparsity=uniform)")
    recovery.check(cfg.recovery)
    check_model(cfg.model)
    check_data(cfg)
    if cfg.semi_structured not in ("auto", True, False):
        raise SurgeonError(f"semi_structured must be auto, true or false, got {cfg.semi_structured}")
    if cfg.semi_structured is True and not structure.semi_structured:
        raise SurgeonError(f"semi_structured=true needs a 2:4 pattern (structure=nm with m=4, n<=2), "
                           f"not structure={structure.label}")
    compact = cfg.compact is True or (cfg.compact == "auto" and structure.compactable)
    return Plan(cfg, structure, schedule, method, structure.target(float(cfg.sparsity)), compact, layer_sparsity,
                cfg.semi_structured is True or (cfg.semi_structured == "auto" and structure.semi_structured))


def _missing(cfg, prefix: str = "") -> list[str]:
    """Keys left at `???` (nothing resolved: an interpolation of a missing key must not raise)."""
    out = []
    for key in cfg.keys():
        if OmegaConf.is_missing(cfg, key):
            out.append(f"{prefix}{key}")
        else:
            node = cfg._get_node(key)
            if isinstance(node, DictConfig):
                out += _missing(node, f"{prefix}{key}.")
    return out


def _check_run(cfg) -> None:
    if not 0.0 <= float(cfg.sparsity) < 1.0:
        raise SurgeonError(f"sparsity must be in [0, 1), got {cfg.sparsity}")
    if cfg.compact not in ("auto", True, False):
        raise SurgeonError(f"compact must be auto, true or false, got {cfg.compact}")
    for key in ("save", "resume"):
        if not isinstance(cfg[key], bool):
            raise SurgeonError(f"{key} must be true or false, got {cfg[key]}")
    if cfg.threads is not None and int(cfg.threads) < 1:
        raise SurgeonError(f"threads must be a positive count or null (all cores), got {cfg.threads}")
    require_counts(cfg.latency, "latency", positive=("prompt_tokens", "new_tokens", "repeats"))
    if cfg.device != "auto":
        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            raise SurgeonError(f"device '{cfg.device}' is not a device (auto, cpu, cuda, cuda:N)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SurgeonError(f"device={cfg.device}, but this torch ({torch.__version__}) sees no CUDA device: "
                               "use device=cpu or device=auto")
    if cfg.logger.name == "wandb" and cfg.logger.mode not in LOGGER_MODES:
        raise SurgeonError(f"logger.mode '{cfg.logger.mode}' is not one of {', '.join(LOGGER_MODES)}")


def check_data(cfg) -> None:
    cal, ev = cfg.calibration, cfg.eval
    require_counts(cal, "calibration", positive=("num_samples", "seq_len"))
    if not ev.corpora:
        raise SurgeonError("eval.corpora is empty: name at least one corpus")
    for name in [cal.corpus, *ev.corpora]:
        corpora.check(name)
    if int(ev.seq_len) < 2 or int(ev.batch_size) < 1:
        raise SurgeonError(f"eval.seq_len must be >= 2 and eval.batch_size >= 1, got {ev.seq_len} and {ev.batch_size}")
    if ev.layerwise not in ("auto", True, False):
        raise SurgeonError(f"eval.layerwise must be auto, true or false, got {ev.layerwise}")
    if ev.max_tokens is not None and int(ev.max_tokens) < int(ev.seq_len):
        raise SurgeonError(f"eval.max_tokens={ev.max_tokens} is less than one window of eval.seq_len={ev.seq_len} "
                           "tokens: raise it, or set it to null for the whole corpus")
    zero_shot.check(ev)
