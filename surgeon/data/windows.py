"""Token windows: seeded random calibration windows, and the non-overlapping evaluation windows
of the perplexity protocol. Tokenized corpora are cached on disk per tokenizer."""
import hashlib

import torch

from surgeon import assets
from surgeon.data.corpora import load_text


def token_stream(name: str, tokenizer) -> torch.Tensor:
    """The whole corpus as one 1-D tensor of token ids, without special tokens."""
    key = hashlib.sha256(f"{name}|{tokenizer.name_or_path}|{len(tokenizer)}".encode()).hexdigest()[:16]
    path = assets.cache_dir("tokens") / f"{name.replace('/', '_').replace(':', '_')[-60:]}.{key}.pt"
    if path.exists():
        return torch.load(path)
    ids = torch.tensor(tokenizer(load_text(name), add_special_tokens=False)["input_ids"], dtype=torch.long)
    tmp = path.with_suffix(".tmp")
    torch.save(ids, tmp)
    tmp.replace(path)
    return ids


def _with_bos(windows: torch.Tensor, bos_id: int | None) -> torch.Tensor:
    """Models that need BOS get it as each window's first token (it is never a prediction target)."""
    if bos_id is None:
        return windows
    windows = windows.clone()
    windows[:, 0] = bos_id
    return windows


def calibration_windows(name, tokenizer, num_samples: int, seq_len: int, seed: int,
                        bos_id: int | None = None) -> torch.Tensor:
    """`num_samples` windows of `seq_len` tokens at seeded random offsets: (num_samples, seq_len)."""
    ids = token_stream(name, tokenizer)
    if len(ids) <= seq_len:
        raise ValueError(f"corpus '{name}' has {len(ids)} tokens, fewer than seq_len={seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (num_samples,), generator=gen)
    return _with_bos(torch.stack([ids[s:s + seq_len] for s in starts.tolist()]), bos_id)


def eval_windows(name, tokenizer, seq_len: int, max_tokens: int | None,
                 bos_id: int | None = None) -> torch.Tensor:
    """Non-overlapping `seq_len` windows over the first `max_tokens` tokens (all if None)."""
    ids = token_stream(name, tokenizer)
    if max_tokens:
        ids = ids[:max_tokens]
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"corpus '{name}' gives no full window of {seq_len} tokens")
    return _with_bos(ids[: n * seq_len].view(n, seq_len), bos_id)
