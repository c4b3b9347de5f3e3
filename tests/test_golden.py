"""Nothing measured changes: every method x structure x schedule case gives the masks, weights and
perplexities recorded before the pruning step was redesigned (tests/golden.py)."""
import json

import pytest

from tests import golden

RECORDED = json.loads(golden.GOLDEN.read_text())


@pytest.mark.parametrize("case", list(golden.CASES))
def test_case_reproduces_its_golden_masks_and_weights(case):
    moved = golden.mismatches(RECORDED[case], golden.run_case(case))
    assert not moved, "\n".join(moved)


def test_comparison_ignores_float_order_noise_and_reports_a_moved_zero_pattern():
    want = {"achieved_sparsity": 0.5, "ppl": {"wiki": 100.0},
            "tensors": {"w": {"mask": "ab", "zeros": 2, "sum": 1.0, "sumsq": 4.0, "proj": 0.5}}}
    noisy = {**want, "ppl": {"wiki": 100.0 * (1 + 1e-6)},
             "tensors": {"w": {**want["tensors"]["w"], "sum": 1.0 + 1e-6, "sumsq": 4.0 * (1 + 1e-6)}}}
    assert golden.mismatches(want, noisy) == []
    moved = {**want, "tensors": {"w": {**want["tensors"]["w"], "mask": "ba"}}}
    assert golden.mismatches(want, moved) == ["w: the zero pattern moved (2 zeros, recorded 2)"]
    drifted = {**want, "ppl": {"wiki": 101.0}}
    assert golden.mismatches(want, drifted) == ["ppl[wiki] 101.0 != 100.0"]


def test_a_child_that_crashes_as_another_cpu_reports_its_own_error():
    with pytest.raises(SystemExit, match=r"(?s)failed as the scalar CPU.*KeyError: 'no_such_case'"):
        golden.run_case_as("scalar", "no_such_case")
