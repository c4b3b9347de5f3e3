"""Calibration and evaluation windows: what a comparison across budgets relies on."""
import torch

from surgeon.data import windows


def test_a_smaller_calibration_set_is_the_first_windows_of_a_larger_one(monkeypatch):
    ids = torch.arange(10_000)
    monkeypatch.setattr(windows, "token_stream", lambda name, tokenizer: ids)
    small, large = (windows.calibration_windows("any", None, n, 64, seed=3) for n in (16, 128))
    assert torch.equal(small, large[:16])
    assert torch.equal(large[:, 1:] - large[:, :-1], torch.ones(128, 63, dtype=ids.dtype))  # contiguous text


def test_eval_windows_tile_the_first_max_tokens_without_overlap(monkeypatch):
    ids = torch.arange(1_000)
    monkeypatch.setattr(windows, "token_stream", lambda name, tokenizer: ids)
    w = windows.eval_windows("any", None, 64, 300, bos_id=7)
    assert w.shape == (4, 64) and (w[:, 0] == 7).all()  # 300 tokens hold four whole windows
    assert torch.equal(w[:, 1:].flatten(), torch.cat([ids[s + 1:s + 64] for s in range(0, 256, 64)]))
