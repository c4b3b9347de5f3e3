"""Real 2:4 speed: the pattern check, conversion that keeps the outputs (CUDA), and the record a
run without a CUDA device leaves."""
import pytest
import torch

from surgeon.eval.semi_structured import convert, is_2_4, unavailable
from surgeon.run import execute
from tests.test_run import QUICK


def test_two_four_pattern_check():
    W = torch.tensor([[0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 0.0, 0.0]])
    assert is_2_4(W)
    W[0, 2] = 5.0
    assert not is_2_4(W)  # three nonzeros in the first group
    assert not is_2_4(torch.zeros(2, 6))  # the row does not split into groups of 4


def test_a_run_without_cuda_records_that_it_was_not_accelerated(compose_cfg, tmp_path):
    res = execute(compose_cfg(*QUICK, "method=magnitude", "structure=nm", "device=cpu",
                              "eval.corpora=[wiki_heldout]"), tmp_path)
    assert res["semi_structured"] == {"accelerated": False, "reason": unavailable(torch.device("cpu"))}
    assert "need a CUDA device" in res["semi_structured"]["reason"]
    unstructured = execute(compose_cfg(*QUICK, "method=magnitude", "eval.corpora=[wiki_heldout]"), tmp_path / "u")
    assert unstructured["semi_structured"] is None  # auto: only 2:4 runs are timed


@pytest.mark.skipif(not torch.cuda.is_available() or unavailable(torch.device("cuda")) is not None,
                    reason="semi-structured sparse kernels need a CUDA device of compute capability >= 8.0")
def test_semi_structured_conversion_keeps_the_outputs():
    from surgeon.method.prune import Method
    from surgeon.model.adapters import adapter_for
    from surgeon.structure.nm import NM
    from tests.conftest import curvature_cfg, method_cfg, prune, tiny_model

    model = tiny_model("tiny_llama").eval()
    adapter = adapter_for(model)
    prune(adapter, Method(method_cfg(), curvature_cfg("identity"), NM(2, 4)), 0.5)
    model = model.to("cuda", torch.float16)
    x = torch.randint(0, 256, (2, 64), device="cuda")
    with torch.no_grad():
        before = model(x).logits.float()
        n = convert(adapter)
        after = model(x).logits.float()
    assert n > 0
    assert (after - before).abs().max() < 2e-2 * before.abs().max()
