"""The candidate ops: one constructor signature, the promised output shapes, DARTS' definitions."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nas_common.errors import RegistryError
from nas_common.ops import (
    NULL_OPS,
    OPS,
    PRIMITIVES,
    Conv7x1_1x7,
    DilConv,
    FactorizedReduce,
    Identity,
    ReLUConvBN,
    SepConv,
    Zero,
    create_op,
    list_ops,
)

OUR_OPS = ["none", "null", "avg_pool_3x3", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
           "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5", "conv_1x1", "conv_3x3", "conv_5x5", "conv_7x1_1x7"]




def test_primitives_are_the_darts_eight_in_order():
    assert PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                          "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert {"none", "null"} == NULL_OPS


@pytest.mark.parametrize("name", OUR_OPS)
def test_every_op_is_registered_with_one_signature(name):
    assert name in list_ops()
    op = OPS.get(name)(6, 1, True)
    assert isinstance(op, nn.Module)


@pytest.mark.parametrize("name", OUR_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
def test_op_keeps_channels_and_divides_size_by_stride(name, stride, size):
    C = 6
    op = create_op(name, C, stride, affine=False)
    x = torch.randn(2, C, size, size + 1)
    y = op(x)
    assert y.shape == (2, C, -(-size // stride), -(-(size + 1) // stride))


@pytest.mark.parametrize("name", ["none", "null"])
def test_null_ops_are_zero_without_parameters(name):
    op = create_op(name, 4, 2)
    assert isinstance(op, Zero)
    assert not list(op.parameters())
    y = op(torch.randn(2, 4, 6, 6))
    assert y.shape == (2, 4, 3, 3) and not y.any()


def test_skip_connect_is_identity_at_stride_1_and_factorized_reduce_at_stride_2():
    x = torch.randn(2, 4, 8, 8)
    ident = create_op("skip_connect", 4, 1)
    assert isinstance(ident, Identity) and torch.equal(ident(x), x)
    assert isinstance(create_op("skip_connect", 4, 2), FactorizedReduce)


def test_avg_pool_excludes_padding():
    op = create_op("avg_pool_3x3", 1, 1)
    y = op(torch.ones(1, 1, 4, 4))
    assert torch.allclose(y, torch.ones_like(y))  # count_include_pad=True would give 4/9 at the corners


def test_affine_flag_reaches_batchnorm():
    for name in ("sep_conv_3x3", "dil_conv_3x3", "conv_3x3", "conv_7x1_1x7"):
        bns = [m for m in create_op(name, 4, 1, affine=False).modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(bn.weight is None for bn in bns)
        bns = [m for m in create_op(name, 4, 1, affine=True).modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(bn.weight is not None for bn in bns)


def test_op_classes_and_parameter_counts_match_darts():
    C = 8
    # sep conv: 2 x (depthwise k*k*C + pointwise C*C) + 2 BN(affine)
    assert sum(p.numel() for p in SepConv(C, C, 3, 1, 1).parameters()) == 2 * (9 * C + C * C) + 4 * C
    assert sum(p.numel() for p in DilConv(C, C, 5, 1, 4, 2).parameters()) == 25 * C + C * C + 2 * C
    assert sum(p.numel() for p in ReLUConvBN(C, 2 * C, 1, 1, 0).parameters()) == 2 * C * C + 4 * C
    assert sum(p.numel() for p in Conv7x1_1x7(C, 1).parameters()) == 2 * 7 * C * C + 2 * C
    # dilated 3x3 with dilation 2 sees a 5x5 window
    op = create_op("dil_conv_3x3", 1, 1).eval()
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 2, 2] = 1.0
    base = op(torch.zeros_like(x))
    assert (op(x) - base)[0, 0, 4, 4] != 0 and (op(x) - base)[0, 0, 3, 3] == 0


def test_factorized_reduce_is_darts_at_even_sizes_and_handles_odd_ones():
    torch.manual_seed(0)
    fr = FactorizedReduce(4, 6).eval()
    x = torch.randn(2, 4, 8, 8)
    r = torch.relu(x)
    expected = fr.bn(torch.cat([fr.conv_1(r), fr.conv_2(r[:, :, 1:, 1:])], dim=1))
    assert torch.allclose(fr(x), expected)
    assert fr(torch.randn(2, 4, 7, 9)).shape == (2, 6, 4, 5)
    assert FactorizedReduce(4, 5)(x).shape == (2, 5, 4, 4)  # odd channel counts too


def test_unknown_op_names_the_valid_ones():
    with pytest.raises(RegistryError, match="sep_conv_3x3"):
        create_op("sep_conv_3x4", 4, 1)
    with pytest.raises(ValueError, match="stride"):
        create_op("sep_conv_3x3", 4, 3)


@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_conv_equals_the_strided_conv_forward_and_backward(channels_last):
    from nas_common.ops import PointwiseConv2d

    torch.manual_seed(0)
    ours, ref = PointwiseConv2d(4, 8, stride=2), nn.Conv2d(4, 8, 1, stride=2, bias=False)
    ref.weight.data.copy_(ours.weight.data)
    x = torch.randn(20, 4, 15, 16)  # an odd size too: both round up
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        ours, x = ours.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = ours(xa)
    (ya * torch.arange(ya.numel()).view_as(ya)).sum().backward()
    with torch.backends.mkldnn.flags(enabled=False):  # the reference, off the kernel that corrupts the heap
        yb = ref(xb)
        (yb * torch.arange(yb.numel()).view_as(yb)).sum().backward()
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(xa.grad, xb.grad)


def test_narrow_strided_pointwise_backward_in_channels_last_survives():
    """torch 2.14.1's oneDNN weight gradient of a strided 1x1 channels-last conv with < 8 input channels
    corrupts the heap on some CPUs; PointwiseConv2d must not reach it (run in a child: a crash is a fail)."""
    import subprocess
    import sys

    code = ("import torch\nfrom nas_common.ops import PointwiseConv2d\ntorch.set_num_threads(1)\n"
            "for cin in (2, 4, 7):\n"
            "    conv = PointwiseConv2d(cin, 8, stride=2).to(memory_format=torch.channels_last)\n"
            "    x = torch.randn(20, cin, 16, 16).contiguous(memory_format=torch.channels_last)\n"
            "    for _ in range(20):\n        conv(x).sum().backward()\nprint('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]
