"""The resnet space: specs, validation, published sizes, torchvision equivalence, random specs."""
from __future__ import annotations

import copy
import random

import pytest
import torch
import torchvision

from nas_common import ArchFileError, count_macs, count_params, get_arch
from nas_common.arch import Arch, load_arch, save_arch
from nas_common.registry import SPACES
from nas_common.spaces.resnet import ResNet, depth_choices, random_resnet_spec, resnet_spec, width_choices

SPACE = SPACES.get("resnet")

# (arch, published params, published MACs): He et al. 2016 params; TAS Table 3 FLOPs (= MACs).
# Our CIFAR nets use 1x1-conv+BN projection shortcuts (option B), which adds 2,752 params and 0.26M MACs
# over option A: still within 2% of every published figure.
CIFAR_PUBLISHED = [
    ("resnet20", 0.27e6, 40.8e6),
    ("resnet32", 0.46e6, 69.1e6),
    ("resnet56", 0.85e6, 125.5e6),
    ("resnet110", 1.7e6, 252.9e6),
]


@pytest.mark.parametrize("name,params,macs", CIFAR_PUBLISHED)
def test_cifar_resnets_match_published_sizes(name, params, macs):
    arch = get_arch(name)
    model = arch.build()
    assert arch.net == {"num_classes": 10, "input": [3, 32, 32]}
    assert count_params(model) == pytest.approx(params, rel=0.02)
    assert count_macs(model, (3, 32, 32)) == pytest.approx(macs, rel=0.02)


def test_exact_counts_of_our_shortcut_choice():
    # ResNet-20 option B: 16*16*9*... computed by hand: option-A params 269,722 + 2*(1x1 conv) 512 + 2048
    # + 2 BNs (2*32 + 2*64) = 272,474
    model = get_arch("resnet20").build()
    assert count_params(model) == 269_722 + 512 + 2048 + 64 + 128
    assert count_macs(model, (3, 32, 32)) == 40_813_184


def test_resnet164_is_a_bottleneck_net_of_1_7m_params():
    arch = get_arch("resnet164")
    assert arch.spec["block"] == "bottleneck" and arch.spec["depths"] == [18, 18, 18]
    assert arch.spec["widths"][2][0] == [64, 64, 256]
    assert count_params(arch.build()) == pytest.approx(1.7e6, rel=0.02)


@pytest.mark.parametrize("name,tv", [("resnet18", torchvision.models.resnet18),
                                     ("resnet50", torchvision.models.resnet50)])
def test_imagenet_resnets_equal_torchvision(name, tv):
    arch = get_arch(name)
    assert arch.net == {"num_classes": 1000, "input": [3, 224, 224]}
    ours, ref = arch.build(), tv()
    assert count_params(ours) == count_params(ref)
    # same module names and shapes: torchvision's weights load strictly and give the same logits
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval(), ref.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # float rounding only: on the CPU our strided 1x1 shortcuts subsample first (PointwiseConv2d),
        # another summation order than torchvision's strided kernel (logits ~50, differences ~3e-5)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name,tv", [("resnet18", torchvision.models.resnet18),
                                     ("resnet50", torchvision.models.resnet50)])
def test_imagenet_macs_equal_torchvision(name, tv):
    ours = get_arch(name).build()
    assert count_macs(ours, (3, 224, 224)) == count_macs(tv(), (3, 224, 224))


def test_imagenet_macs_published():
    # torchvision's metadata: ResNet-18 1.814 GFLOPS, ResNet-50 4.089 (multiply-accumulates); closed-form
    # count here (test_costs checks it equals count_macs), the traced count at 224 is the slow test above
    from nas_common.costs import shapes_macs
    from nas_common.spaces.resnet import resnet_conv_shapes

    for name, macs in (("resnet18", 1.814e9), ("resnet50", 4.089e9)):
        a = get_arch(name)
        assert shapes_macs(resnet_conv_shapes(a.spec, a.net["input"], 1000)) == pytest.approx(macs, rel=1e-3)


def test_imagenet_macs_equal_torchvision_small_input():
    ours, ref = get_arch("resnet18").build(), torchvision.models.resnet18()
    assert count_macs(ours, (3, 64, 64)) == count_macs(ref, (3, 64, 64))


def test_resnet_spec_layouts():
    s = resnet_spec(56)
    assert s["depths"] == [9, 9, 9] and s["stem"] == 16
    assert [st[0] for st in s["widths"]] == [[16, 16], [32, 32], [64, 64]]
    assert resnet_spec(50, "imagenet")["depths"] == [3, 4, 6, 3]
    assert resnet_spec(50, "imagenet")["widths"][3][0] == [512, 512, 2048]
    with pytest.raises(ArchFileError, match="6n\\+2"):
        resnet_spec(21)
    with pytest.raises(ArchFileError, match="18"):
        resnet_spec(19, "imagenet")


def test_pruned_spec_builds_with_per_conv_widths_and_projections():
    spec = resnet_spec(20)
    spec["depths"] = [2, 3, 1]
    spec["widths"][0][0] = [5, 7]    # block output 7 != 16: projection shortcut
    spec["widths"][0][1] = [9, 7]    # input 7 == output 7: identity shortcut
    spec["widths"][1][2] = [11, 30]
    model = SPACE.build(spec, {"num_classes": 10, "input": [3, 32, 32]})
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.layer1[0].downsample is not None and model.layer1[1].downsample is None
    assert model.layer1[0].conv1.out_channels == 5 and model.layer1[1].conv1.in_channels == 7
    assert len(model.layer3) == 1 and model.fc.in_features == 64
    # widths of blocks beyond the depth are dropped: one canonical form
    norm = SPACE.validate_spec(spec)
    assert [len(w) for w in norm["widths"]] == [2, 3, 1]


def test_shortcut_flags_drop_residual_paths():
    spec = resnet_spec(20)
    spec["shortcuts"] = [[True, False, True], [True] * 3, [True] * 3]
    model = ResNet(spec)
    assert model.layer1[1].shortcut is False
    full = ResNet(resnet_spec(20))
    with torch.no_grad():
        model.load_state_dict(full.state_dict())
        x = torch.randn(1, 3, 32, 32)
        assert not torch.allclose(model.eval()(x), full.eval()(x))
    # all-true shortcuts are the default and are normalised away
    spec["shortcuts"][0][1] = True
    assert "shortcuts" not in SPACE.validate_spec(spec)


@pytest.mark.parametrize("mutate,field", [
    (lambda s: s.pop("depths"), "spec.depths"),
    (lambda s: s.update(kind="mnist"), "spec.kind"),
    (lambda s: s.update(block="dense"), "spec.block"),
    (lambda s: s.update(stem=0), "spec.stem"),
    (lambda s: s["depths"].__setitem__(1, 0), "spec.depths[1]"),
    (lambda s: s["depths"].__setitem__(2, 4), "spec.widths[2]"),
    (lambda s: s["widths"][1][2].append(3), "spec.widths[1][2]"),
    (lambda s: s["widths"][0][1].__setitem__(1, 2.5), "spec.widths[0][1][1]"),
    (lambda s: s["widths"][0][1].__setitem__(0, True), "spec.widths[0][1][0]"),
    (lambda s: s.update(shortcuts=[[True] * 3, [True, 1, True], [True] * 3]), "spec.shortcuts[1][1]"),
    (lambda s: s.update(extra=1), "extra"),
])
def test_validation_names_the_field(mutate, field):
    spec = copy.deepcopy(resnet_spec(20))
    mutate(spec)
    with pytest.raises(ArchFileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        SPACE.validate_spec(spec)


def test_arch_file_round_trip(tmp_path):
    arch = get_arch("resnet32")
    path = save_arch(arch.with_costs(), tmp_path / "arch.json")
    back = load_arch(path)
    assert back == arch and back.costs["params"] == count_params(arch.build())
    assert "ResNet-32" in back.describe()


def test_random_spec_prunes_within_choices():
    rng = random.Random(3)
    base = resnet_spec(56)
    seen_depths = set()
    for _ in range(20):
        spec = SPACE.random_spec(rng, {"num_classes": 10, "input": [3, 32, 32]})
        assert spec == SPACE.validate_spec(spec)
        assert all(1 <= d <= 9 for d in spec["depths"])
        seen_depths.update(spec["depths"])
        for s, stage in enumerate(spec["widths"]):
            for b, blk in enumerate(stage):
                for i, c in enumerate(blk):
                    assert c in width_choices(base["widths"][s][b][i])
    assert len(seen_depths) > 3
    assert random_resnet_spec(random.Random(0), base) == random_resnet_spec(random.Random(0), base)
    spec = SPACE.random_spec(random.Random(0), {"num_classes": 1000, "input": [3, 224, 224]})
    assert spec["kind"] == "imagenet"


def test_random_spec_networks_run():
    rng = random.Random(0)
    for _ in range(2):
        spec = random_resnet_spec(rng, resnet_spec(20))
        model = SPACE.build(spec, {"num_classes": 7, "input": [1, 16, 16]})
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 7)


def test_width_and_depth_choices_follow_tas():
    assert width_choices(16) == [4, 6, 8, 9, 11, 12, 14, 16]
    assert width_choices(32) == [9, 12, 16, 19, 22, 25, 28, 32]
    assert width_choices(64) == [19, 25, 32, 38, 44, 51, 57, 64]
    assert depth_choices(3) == [1, 2, 3]
    assert depth_choices(9) == [1, 3, 5, 7, 9]
    assert depth_choices(18) == [1, 3, 5, 7, 9, 11, 13, 15, 17, 18]


def test_builtin_arch_is_an_arch():
    a = get_arch("resnet110")
    assert isinstance(a, Arch) and a.space == "resnet" and a.spec["depths"] == [18, 18, 18]
