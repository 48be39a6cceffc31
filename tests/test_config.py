"""kvjax.Config: presets plus overrides, as the CLI and Python callers give them."""
import pytest

import kvjax
from kvjax import stage1
from kvjax.errors import KvjaxError


def test_none_is_a_value_except_for_the_clis_unset_flags():
    paper = kvjax.Config("paper")
    assert paper.stage1.transform is not None and paper.input_size is None
    assert kvjax.Config("paper", stage1_transform=None).stage1.transform is None  # no transform
    fast = kvjax.Config("fast")
    assert fast.input_size == fast.stage1.size  # fast feeds the video at its own size
    assert kvjax.Config("fast", input_size=None).input_size is None  # the model's own
    unset = kvjax.Config("fast", steps1=None, steps2=None, size=None, param=None, chunk=None)
    assert unset == fast
    assert unset.stage1 == stage1.Stage1Config.preset("fast")


def test_overrides_reach_their_stage_and_bad_ones_name_the_valid():
    c = kvjax.Config("fast", steps1=7, lr2=0.5, stage2_flow_param="displacement")
    assert (c.stage1.steps, c.stage2.lr, c.stage2.flow_param) == (7, 0.5, "displacement")
    with pytest.raises(KvjaxError, match="unknown Config override 'steps'.*steps1"):
        kvjax.Config("fast", steps=3)
    with pytest.raises(KvjaxError, match="unknown preset 'slow'; valid: fast, paper"):
        kvjax.Config("slow")
    with pytest.raises(KvjaxError, match="steps1 must be at least 1; got 0"):
        kvjax.Config("fast", steps1=0)  # the CLI crashed after both stages, files left
    c = kvjax.Config("fast", steps1=40, coarse_steps=30)
    assert (c.stage1.steps, c.stage1.coarse_steps, c.stage1.coarse_factor) == (40, 30, 2)
    with pytest.raises(KvjaxError, match=r"divisible by coarse_factor \(2\); got size "
                                         r"\(16, 63, 64\)"):
        kvjax.Config("fast", coarse_steps=30, size=(16, 63, 64))


def test_paper_takes_the_true_relu_gradient_fast_redirects_it():
    """The reference differentiates its network exactly (a kernel silent on the start video
    stays grey there); `fast` wakes such kernels up (kvjax.models.relu)."""
    assert kvjax.Config("paper").relu_grad == "exact"
    assert kvjax.Config("fast").relu_grad == "redirect"
    assert kvjax.Config("paper", relu_grad="redirect").relu_grad == "redirect"
    assert kvjax.Config("paper").to_dict()["relu_grad"] == "exact"
    with pytest.raises(KvjaxError, match="relu_grad must be 'exact' or 'redirect'"):
        kvjax.Config("fast", relu_grad="lucid")
