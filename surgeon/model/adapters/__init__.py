"""Registry of architecture adapters, keyed by `config.model_type`."""
from surgeon.errors import SurgeonError
from surgeon.model.adapters.base import ROLES, Adapter, Attention, Mlp, Units
from surgeon.model.adapters.gemma2 import Gemma2Adapter
from surgeon.model.adapters.gemma3 import Gemma3Adapter
from surgeon.model.adapters.llama import LlamaAdapter
from surgeon.model.adapters.mixtral import MixtralAdapter
from surgeon.model.adapters.opt import OptAdapter
from surgeon.model.adapters.phi3 import Phi3Adapter
from surgeon.model.adapters.qwen2 import Qwen2Adapter
from surgeon.model.adapters.qwen3 import Qwen3Adapter

ADAPTERS: dict[str, type[Adapter]] = {
    t: cls for cls in (LlamaAdapter, Qwen2Adapter, Qwen3Adapter, Gemma2Adapter, Gemma3Adapter, Phi3Adapter, OptAdapter,
                       MixtralAdapter)
    for t in cls.model_types
}


def check_model_type(model_type: str) -> None:
    if model_type not in ADAPTERS:
        raise SurgeonError(f"no architecture adapter for model_type '{model_type}' "
                           f"(have: {', '.join(sorted(ADAPTERS))}); add one in surgeon/model/adapters/")


def adapter_for(model) -> Adapter:
    check_model_type(model.config.model_type)
    return ADAPTERS[model.config.model_type](model)


__all__ = ["ADAPTERS", "ROLES", "Adapter", "Attention", "Mlp", "Units", "adapter_for", "check_model_type"]
