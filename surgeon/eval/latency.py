"""Generation latency for a fixed prompt: what a smaller (or sparse) model buys at inference time.

Greedy decoding of `new_tokens` tokens after a `prompt_tokens` prompt (KV cache on), timed over
`repeats` runs after one warm-up, on `device`: `ms_per_token` is the median milliseconds per
generated token (prefill included, amortized); `prefill_decode_ms` splits it into the prompt's
forward pass and each later token's step."""
import statistics
import time

import torch

from surgeon.model.placement import on_device


def _timer(device):
    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
    return clock


def _prompt(model, prompt_tokens, vocab, device):
    vocab = vocab or model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (1, prompt_tokens), generator=g).to(device)


@torch.inference_mode()
def ms_per_token(model, device, prompt_tokens: int = 64, new_tokens: int = 32, repeats: int = 3,
                 vocab: int | None = None) -> float:
    return prefill_decode_ms(model, device, prompt_tokens, new_tokens, repeats, vocab)["ms_per_token"]


@torch.inference_mode()
def prefill_decode_ms(model, device, prompt_tokens: int = 64, new_tokens: int = 32, repeats: int = 3,
                      vocab: int | None = None) -> dict:
    """{prefill_ms, decode_ms_per_token, ms_per_token}: medians over `repeats`."""
    clock = _timer(device)
    prompt = _prompt(model, prompt_tokens, vocab, device)

    def generate() -> float:
        t = clock()
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        return (clock() - t) * 1000

    def prefill() -> float:
        t = clock()
        model(prompt, use_cache=True)
        return (clock() - t) * 1000

    with on_device(model, device):
        generate()
        gen = statistics.median(generate() for _ in range(repeats))
        pre = statistics.median(prefill() for _ in range(repeats))
    return {"prefill_ms": pre, "decode_ms_per_token": max(gen - pre, 0.0) / max(new_tokens - 1, 1),
            "ms_per_token": gen / new_tokens}
