"""Generation latency for a fixed prompt: what a smaller model buys at inference time.

Greedy decoding of `new_tokens` tokens after a `prompt_tokens` prompt (KV cache on), timed over
`repeats` runs after one warm-up; returns the median milliseconds per generated token (prefill
included, amortized), measured on `device`."""
import statistics
import time

import torch

from surgeon.model.placement import on_device


@torch.inference_mode()
def ms_per_token(model, device, prompt_tokens: int = 64, new_tokens: int = 32, repeats: int = 3,
                 vocab: int | None = None) -> float:
    vocab = vocab or model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (1, prompt_tokens), generator=g).to(device)

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) * 1000 / new_tokens

    with on_device(model, device):
        once()
        times = [once() for _ in range(repeats)]
    return statistics.median(times)
