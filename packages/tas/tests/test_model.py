"""The search network: forward on every base kind, gradients, derive, one-hot forward = derived net's shape."""
from __future__ import annotations

import pytest
import torch

from nas_common import Arch
from nas_common.spaces.resnet import ResNetSpace
from tas_nas.model import SearchResNet, base_spec


@pytest.mark.parametrize("name,mix", [("resnet20", "dense"), ("resnet20", "gather"), ("resnet18", "auto"),
                                      ("resnet50", "auto")])
def test_forward_and_gradients(name: str, mix: str) -> None:
    torch.manual_seed(0)
    shape = (3, 32, 32)
    model = SearchResNet(base_spec(name), 7, shape, mix=mix).train()
    x = torch.randn(2, *shape)
    out = model(x, model.sample(1.0))
    assert out.shape == (2, 7)
    g_w, g_d = torch.autograd.grad(out.logsumexp(1).sum(), model.arch_parameters())
    assert g_w.abs().sum() > 0 and g_d.abs().sum() > 0
    spec = model.derive_spec()
    ResNetSpace().validate_spec(spec)
    assert Arch("resnet", spec, {"num_classes": 7, "input": list(shape)}).build()(x).shape == (2, 7)


def test_width_and_depth_choices_of_resnet56() -> None:
    model = SearchResNet(base_spec("resnet56"), 10, (3, 32, 32))
    assert model.width_logits.shape == (1 + 27 * 2, 8)
    assert model.choices[0] == [4, 6, 8, 9, 11, 12, 14, 16]
    assert model.choices[-1] == [19, 25, 32, 38, 44, 51, 57, 64]
    assert model.depth_choices == [[1, 3, 5, 7, 9]] * 3
    assert set(model.arch_parameters()).isdisjoint(model.weight_parameters())


def test_argmax_at_full_width_derives_the_base_network() -> None:
    model = SearchResNet(base_spec("resnet32"), 10, (3, 32, 32))
    with torch.no_grad():
        model.width_logits.zero_()
        model.width_logits[:, -1] = 1.0
        model.depth_logits.zero_()
        model.depth_logits[:, -1] = 1.0
    assert model.derive_spec() == base_spec("resnet32")


def test_eval_mode_uses_running_statistics() -> None:
    torch.manual_seed(0)
    model = SearchResNet(base_spec("resnet20"), 10, (3, 16, 16)).eval()
    x = torch.randn(4, 3, 16, 16)
    torch.manual_seed(1)
    a = model(x, model.sample(1.0))
    torch.manual_seed(1)
    b = model(x[:2], model.sample(1.0))
    torch.testing.assert_close(a[:2], b)  # no batch statistics in eval mode


@pytest.mark.parametrize("mode", ["width", "depth"])
def test_a_dimension_that_is_not_searched_stays_at_the_unpruned_network(mode: str) -> None:
    torch.manual_seed(0)
    width, depth = mode == "width", mode == "depth"
    model = SearchResNet(base_spec("resnet20"), 10, (3, 16, 16), search_width=width, search_depth=depth,
                         init_std=1.0)
    assert model.arch_parameters() == ([model.width_logits] if width else [model.depth_logits])
    idx, p, dw = model.sample(1.0)
    full = base_spec("resnet20")
    spec = model.derive_spec()
    if width:  # TAS(W): every stage at full depth, in the forward and in the derived net
        assert (dw == torch.nn.functional.one_hot(model.full_depth_index, dw.shape[1])).all()
        assert spec["depths"] == full["depths"] and spec["widths"] != full["widths"]
    else:  # TAS(D): every conv at full width
        assert (idx[:, 0] == model.full_width_index).all() and (p[:, 0] == 1).all() and (p[:, 1:] == 0).all()
        assert spec["widths"] == [w[: d] for w, d in zip(full["widths"], spec["depths"], strict=True)]
        assert spec["depths"] != full["depths"]
    assert model(torch.randn(2, 3, 16, 16), (idx, p, dw)).shape == (2, 10)
