"""Bad input, faults and caches: one clear line before any work, nothing silently stale or wrong.
Config, file, cache, device and output-folder failures, on tiny models."""
import importlib
import json
import os
import tempfile
import subprocess
import sys

import pytest
import torch

from surgeon import cache, plan
from surgeon.errors import SurgeonError

QUICK = ["model=tiny_llama", "logger=none", "calibration.num_samples=4", "calibration.seq_len=64",
         "eval.seq_len=64", "eval.max_tokens=512", "eval.cache_dense=false", "eval.corpora=[ptb]"]


def _one_line(*args):
    proc = subprocess.run([sys.executable, "-m", "surgeon.run", *args], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


# -- config ---------------------------------------------------------------------------------------
def test_a_required_option_left_unset_is_named(compose_cfg):
    with pytest.raises(SurgeonError, match=r"model.path is required and has no default: add model.path=\.\.\."):
        plan.build(compose_cfg("model=local"))
    with pytest.raises(SurgeonError, match="calibration.path is required"):
        plan.build(compose_cfg("calibration=textfile"))


def test_a_local_folder_that_holds_no_checkpoint(compose_cfg, tmp_path):
    with pytest.raises(SurgeonError, match="holds no config.json"):
        plan.build(compose_cfg("model=local", f"model.path={tmp_path}"))


# -- files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary"),
    ("caf\u00e9 au lait".encode("latin-1"), "is not UTF-8 text (byte 3)"),
])
def test_a_calibration_file_that_is_no_text_fails_before_the_model_loads(tmp_path, content, message):
    path = tmp_path / "cal.txt"
    path.write_bytes(content)
    line = _one_line("calibration=textfile", f"calibration.path={path}", *QUICK)
    assert line.startswith("error: corpus file") and message in line


def test_a_text_too_short_for_one_window(tmp_path, compose_cfg):
    from surgeon.run import execute

    path = tmp_path / "short.txt"
    path.write_text("Only a few words here.")
    cfg = compose_cfg(*QUICK, "calibration=textfile", f"calibration.path={path}", "method=wanda")
    with pytest.raises(SurgeonError, match="has .* tokens, not more than calibration.seq_len=64: lower seq_len"):
        execute(cfg, tmp_path / "run")


def test_an_unwritable_output_folder_fails_in_one_line(tmp_path, monkeypatch):
    from surgeon import config

    locked = tmp_path / "ro"
    locked.mkdir()
    real = tempfile.TemporaryFile

    def refuse(*args, dir=None, **kwargs):  # root ignores permission bits, so refuse the write itself
        if str(dir) == str(locked):
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(SurgeonError, match=f"cannot write run results under {locked} \\(Permission denied\\)"):
        config.check_output([f"hydra.run.dir={locked}/run"])
    config.check_output([f"hydra.run.dir={tmp_path}/elsewhere/run"])


def test_an_override_of_a_key_the_config_lacks_fails_in_one_line():
    from surgeon import config

    with pytest.raises(SurgeonError, match=r"Could not override 'eval.bogus'.*\+eval.bogus=1") as e:
        config.check_composes(["eval.bogus=1"])
    assert "\n" not in str(e.value)
    config.check_composes(["method=wanda", "calibration.num_samples=4"])
    config.check_composes(["-m", "method=wanda,sparsegpt"])  # sweeps compose per job


# -- caches ---------------------------------------------------------------------------------------
def test_an_edited_text_file_is_tokenized_again(tmp_path, monkeypatch):
    from surgeon.data.windows import token_stream
    from surgeon.model.load import load_tokenizer

    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path / "cache"))
    tok = load_tokenizer("smollm2_135m")
    path = tmp_path / "corpus.txt"
    path.write_text("The first version of the text. " * 20)
    first = token_stream(f"file:{path}", tok)
    path.write_text("A second, different text entirely. " * 20)
    second = token_stream(f"file:{path}", tok)
    assert not torch.equal(first, second)
    assert torch.equal(second, torch.tensor(tok(path.read_text(), add_special_tokens=False)["input_ids"]))
    cached = list((tmp_path / "cache" / "tokens").glob("*.pt"))
    assert len(cached) == 2
    cached[-1].write_bytes(cached[-1].read_bytes()[:20])  # truncated: rebuilt, not a crash
    assert torch.equal(token_stream(f"file:{path}", tok), second) or torch.equal(
        token_stream(f"file:{path}", tok), first)


def test_a_damaged_cache_entry_is_found(tmp_path):
    (tmp_path / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "config.json").write_text("{}")
    assert cache.damage(tmp_path) and "no manifest" in cache.damage(tmp_path)
    cache.write_manifest(tmp_path, {"path": "source"})
    assert cache.damage(tmp_path) is None
    data = bytearray((tmp_path / "weights.bin").read_bytes())
    data[100] = 0  # a zeroed byte: same size, other contents
    (tmp_path / "weights.bin").write_bytes(bytes(data))
    assert cache.damage(tmp_path) == "weights.bin does not match its checksum"
    (tmp_path / "weights.bin").write_bytes(bytes(data[:1000]))
    assert "weights.bin is 1000 bytes, not 16384 (truncated?)" == cache.damage(tmp_path)
    (tmp_path / "weights.bin").unlink()
    assert cache.damage(tmp_path) == "weights.bin is missing"


def test_a_corrupted_model_cache_is_rebuilt_and_gives_the_fresh_figures(tmp_path, monkeypatch):
    """Bytes zeroed in the cached dequantized model: found, rebuilt from the GGUF, and the weights
    (and so every figure) equal those of a fresh cache; the dense cache key follows the weights."""
    import shutil

    from surgeon import assets
    from surgeon.config import model_config

    loading = importlib.import_module("surgeon.model.load")  # the module: surgeon.model.load is also a function

    cfg = model_config("smollm2_135m")
    fresh = loading._dequantized_folder(cfg)
    key = loading.weights_id(cfg)
    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path))
    monkeypatch.setattr(loading, "_verified", set())
    copy = assets.cache_dir("models") / cfg.name
    shutil.copytree(fresh, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)
    weights.write_bytes(bytes(data))
    assert loading._dequantized_folder(cfg) == copy  # rebuilt in place
    assert cache.damage(copy) is None
    assert cache.file_digest(weights) == cache.file_digest(fresh / "model.safetensors")
    assert loading.weights_id(cfg) == key


def test_parallel_jobs_that_find_no_model_cache_build_it_once(tmp_path, monkeypatch):
    """Two jobs start on an empty cache: one dequantizes, the other waits for its lock and then
    loads that folder; before the lock, the second's build deleted the folder the first read."""
    import threading
    import time

    from surgeon import assets
    from surgeon.config import model_config

    loading = importlib.import_module("surgeon.model.load")
    cfg = model_config("smollm2_135m")
    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path))
    monkeypatch.setattr(loading, "_verified", set())
    builds = []

    def dequantize(cfg, folder):  # stands in for the 10 s GGUF dequantization
        builds.append(folder)
        time.sleep(0.5)
        tmp = folder.parent / ".building"
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"weights")
        cache.write_manifest(tmp, cache.stamp(loading._source_path(cfg)))
        os.replace(tmp, folder)

    monkeypatch.setattr(loading, "_dequantize", dequantize)
    found = []

    def job():
        found.append(loading._dequantized_folder(cfg))
        loading._verified.clear()  # as a separate process: nothing checked yet

    jobs = [threading.Thread(target=job) for _ in range(2)]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join()
    folder = assets.cache_dir("models") / cfg.name
    assert builds == [folder] and found == [folder, folder]
    assert cache.damage(folder) is None


def test_parallel_jobs_that_find_no_dense_figures_measure_them_once(tmp_path, monkeypatch):
    """Two jobs of one model miss the dense cache together: one measures, the other waits for the
    entry's lock and reads its figures; before the lock each measured them (a dense zero-shot pass
    of a 0.5B model is most of an hour on a CPU)."""
    import threading
    import time

    perplexity = importlib.import_module("surgeon.eval.perplexity")  # the package's name is a function
    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path))
    measured, found = [], []

    def measure():
        measured.append(threading.current_thread().name)
        time.sleep(0.5)
        return {"wiki_heldout": 17.25}

    jobs = [threading.Thread(target=lambda: found.append(perplexity.dense_cached({"model": "m"}, measure)))
            for _ in range(2)]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join()
    assert len(measured) == 1 and found == [{"wiki_heldout": 17.25}] * 2


def test_the_dense_cache_is_keyed_by_the_weights(tmp_path, compose_cfg):
    loading = importlib.import_module("surgeon.model.load")

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "model.safetensors").write_bytes(b"0" * 10)
    cfg = compose_cfg("model=local", f"model.path={tmp_path}").model
    before = loading.weights_id(cfg)
    (tmp_path / "model.safetensors").write_bytes(b"1" * 11)
    assert loading.weights_id(cfg) != before


# -- device ---------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_asked_for_on_a_machine_without_it():
    line = _one_line("device=cuda", *QUICK)
    assert "device=cuda, but this torch" in line and "sees no CUDA device: use device=cpu or device=auto" in line


# -- warnings -------------------------------------------------------------------------------------
def test_windows_beyond_the_models_positions_and_hours_of_work_are_warned(compose_cfg, caplog):
    from surgeon import estimate
    from surgeon.model import adapter_for
    from tests.conftest import tiny_model

    adapter = adapter_for(tiny_model("tiny_llama"))
    cfg = compose_cfg(*QUICK, "calibration.seq_len=100000", "calibration.num_samples=100000")
    lines = estimate.warn(adapter, cfg, plan.build(cfg), torch.device("cpu"), eval_tokens=512)
    assert lines[0] == "calibration.seq_len=100000 is beyond the model's 2048 positions: windows mean nothing past them"
    assert lines[1].startswith("calibration will take about") and "10,000,000,000 tokens" in lines[1]
    assert estimate.warn(adapter, compose_cfg(*QUICK), plan.build(compose_cfg(*QUICK)), torch.device("cpu"),
                         eval_tokens=512) == []
