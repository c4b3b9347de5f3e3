"""Recovery that keeps the sparsity: LoRA after any method, merged with every zero kept."""
import json

import pytest
import torch

from surgeon.model.adapters import adapter_for
from surgeon.model.load import _tiny  # noqa: F401  (tiny models via tests.conftest)
from surgeon.run import execute
from tests.test_run import QUICK

RECOVER = ["recovery=lora", "recovery.steps=6", "recovery.batch_size=2", "recovery.seq_len=64", "recovery.lr=1e-2",
           "eval.corpora=[wiki_heldout]"]


def _zeros(model):
    adapter = adapter_for(model)
    return {(i, n): lin.weight == 0 for i, layer in enumerate(adapter.layers())
            for n, lin in adapter.prunable_linears(layer).items()}


@pytest.mark.parametrize("structure", ["nm", "unstructured"])
def test_recovered_model_has_exactly_the_zeros_it_had(compose_cfg, tmp_path, monkeypatch, structure):
    from surgeon import recovery

    seen = {}
    real = recovery.lora.finetune

    def spy(adapter, *args, **kwargs):  # the pattern as pruning left it, before any training
        seen["before"] = _zeros(adapter.model)
        seen["weights"] = {k: lin.weight.detach().clone() for k, lin in
                           ((k, adapter.prunable_linears(adapter.layers()[k[0]])[k[1]]) for k in seen["before"])}
        losses = real(adapter, *args, **kwargs)
        seen["model"] = adapter.model
        return losses

    monkeypatch.setattr(recovery.lora, "finetune", spy)
    res = execute(compose_cfg(*QUICK, "method=sparsegpt", f"structure={structure}", *RECOVER), tmp_path)
    rec = res["recovery"]
    assert rec["zeros_kept"] and rec["steps"] == 6 and rec["tokens"] == 6 * 2 * 64 and len(rec["losses"]) == 6
    after = _zeros(seen["model"])
    assert all(torch.equal(seen["before"][k], after[k]) for k in after)
    adapter = adapter_for(seen["model"])
    moved = [not torch.equal(seen["weights"][(i, n)], lin.weight) for i, layer in enumerate(adapter.layers())
             for n, lin in adapter.prunable_linears(layer).items()]
    assert all(moved)  # every linear's survivors were trained
    if structure == "nm":
        for k, z in after.items():
            assert (z.view(z.shape[0], -1, 4).sum(-1) == 2).all()  # 2:4 in every group of four
    assert res["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert set(rec["ppl_before"]) == set(res["ppl"]) and rec["ppl_before"] != res["ppl"]
    assert "recovery" in res["time_s"]


def test_recovery_on_instruction_data_from_an_alpaca_file(compose_cfg, tmp_path):
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": f"Add {i} and {i}.", "input": "", "output": f"{2 * i}"}
                                for i in range(20)]))
    res = execute(compose_cfg(*QUICK, "method=wanda", *RECOVER, "recovery.data=instructions",
                              f"recovery.instructions.path={data}"), tmp_path / "run")
    assert res["recovery"]["zeros_kept"] and res["recovery"]["data"] == "instructions"
    assert res["recovery"]["loss_last"] < res["recovery"]["loss_first"]
