"""What a pruning step works on: the model (through its adapter), its tokenizer, the calibration
windows, the compute device, the seed, the logger and the evaluator (for per-shot perplexity).
Built once per run by surgeon/run.py; schedules and methods read it."""
from dataclasses import dataclass

import torch


@dataclass
class Context:
    adapter: object
    tokenizer: object
    windows: torch.Tensor | None   # calibration windows; None: the method reads no data
    device: torch.device
    seed: int
    bos: int | None                # BOS token id where the model needs one
    logger: object
    evaluator: object
