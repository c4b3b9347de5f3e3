"""Token windows: seeded random calibration windows, and the non-overlapping evaluation windows
of the perplexity protocol. Tokenized corpora are cached on disk, keyed by the tokenizer and by
what the text is (a file's contents, the shipping package's version): an edited file is
tokenized again, and a cache file that does not load is rebuilt."""
import logging
import os
import tempfile

import torch

from surgeon import assets, cache
from surgeon.data import corpora
from surgeon.errors import SurgeonError
from surgeon.tracking.results import shareable

log = logging.getLogger(__name__)


def token_stream(name: str, tokenizer) -> torch.Tensor:
    """The whole corpus as one 1-D tensor of token ids, without special tokens."""
    key = cache.digest({"corpus": name, "text": corpora.version(name), "tokenizer": tokenizer.name_or_path,
                        "vocab": len(tokenizer), "class": type(tokenizer).__name__})
    path = assets.cache_dir("tokens") / f"{name.replace('/', '_').replace(':', '_')[-60:]}.{key}.pt"
    if path.exists():
        try:
            return torch.load(path)
        except Exception as e:  # truncated or garbled: whatever torch.load raises
            log.warning("token cache %s does not load (%s); rebuilding it", path, e)
    ids = torch.tensor(tokenizer(corpora.load_text(name), add_special_tokens=False)["input_ids"], dtype=torch.long)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    torch.save(ids, tmp)
    shareable(tmp)
    os.replace(tmp, path)
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
        raise SurgeonError(f"calibration corpus '{name}' has {len(ids)} tokens, not more than "
                           f"calibration.seq_len={seq_len}: lower seq_len or give a longer text")
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
        raise SurgeonError(f"eval corpus '{name}' gives no full window of eval.seq_len={seq_len} tokens "
                           f"({len(ids)} tokens): lower eval.seq_len or raise eval.max_tokens")
    return _with_bos(ids[: n * seq_len].view(n, seq_len), bos_id)
