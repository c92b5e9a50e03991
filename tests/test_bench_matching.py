"""Baselines at the same cost: random architectures of each space land within the MAC tolerance of a
target, and the space's reference network scales to it (tools/bench/matching.py)."""
from __future__ import annotations

import random

import pytest

C10 = {"num_classes": 10, "input": [3, 32, 32]}
# micro-scale nets of every space the harness knows (the spaces of packages not installed are skipped)
NETS = {
    "resnet": dict(C10),
    "darts": {**C10, "C": 4, "layers": 3, "auxiliary": False},
    "darts-bn": {**C10, "C": 4, "layers": 3, "auxiliary": False},
    "bsn-resnet": {**C10, "depth": 8, "widths": [8, 16, 32]},
    "bsn-cnf": {**C10, "layers": 3, "channels": 16},
    "supnet-m": {**C10, "width": 8, "blocks": [1, 1, 1], "stem": 8, "stem_stride": 2},
}


def space_or_skip(name: str) -> object:
    from nas_common.registry import SPACES

    if name not in SPACES:
        pytest.skip(f"space {name} is not installed")
    return SPACES.get(name)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> object:
    """Cost counting builds and runs small networks: one intra-op thread on this 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("space_name", sorted(NETS))
def test_random_arch_of_each_space_lands_within_tolerance(space_name: str) -> None:
    from tools.bench.matching import MAC_TOLERANCE, counted, random_arch_like

    space = space_or_skip(space_name)
    net = NETS[space_name]
    target = counted(space_name, space.random_spec(random.Random(123), net), net)
    got = random_arch_like(target, seed=0)
    assert got is not None
    arch, info = got
    assert arch.space == space_name and arch != target
    assert abs(arch.costs["macs"] / target.costs["macs"] - 1) <= MAC_TOLERANCE, info
    assert info["mac_gap"] == pytest.approx(arch.costs["macs"] / target.costs["macs"] - 1)
    again, _ = random_arch_like(target, seed=0)  # a job re-run draws the same architecture
    assert again == arch


def test_a_target_the_sampler_never_reaches_is_matched_by_rescaling_the_closest_draw() -> None:
    """An all-skip DARTS cell (what NAT can produce) costs far less than any uniform draw at the same C."""
    from tools.bench.matching import MAC_TOLERANCE, counted, random_arch_like

    space_or_skip("darts")
    net = NETS["darts"]
    ops = [["skip_connect", j] for i in range(4) for j in (0, 1)]
    cell = {"normal": ops, "normal_concat": [2, 3, 4, 5], "reduce": ops, "reduce_concat": [2, 3, 4, 5]}
    target = counted("darts", cell, net)
    arch, info = random_arch_like(target, seed=0, tries=5)
    assert info["matched_by"] == "closest draw rescaled" and info["draws"] == 5
    _, quick = random_arch_like(target, seed=0, tries=100, hopeless_after=8)  # no draw came close: stop early
    assert quick["draws"] == 8
    assert arch.net["C"] < net["C"] or arch.net["layers"] != net["layers"]
    assert abs(arch.costs["macs"] / target.costs["macs"] - 1) <= MAC_TOLERANCE


@pytest.mark.parametrize(("space_name", "reference"), [("resnet", "resnet56"), ("darts", "darts-v2"),
                                                       ("bsn-resnet", "B-ResNet (all modules)")])
def test_reference_network_scaled_to_the_target_macs(space_name: str, reference: str) -> None:
    from tools.bench.matching import MAC_TOLERANCE, counted, reference_like

    space = space_or_skip(space_name)
    net = NETS[space_name]
    target = counted(space_name, space.random_spec(random.Random(7), net), net)
    arch, info = reference_like(target)
    assert info["reference"] == reference and arch.space == space_name
    assert abs(arch.costs["macs"] / target.costs["macs"] - 1) <= MAC_TOLERANCE, info
    if space_name == "darts":  # DARTS-V2's genotype at another C (and maybe cell count)
        from nas_common.arch import get_arch

        assert arch.spec == get_arch("darts-v2").spec and info["width_multiplier"] > 0
    if space_name == "resnet":  # ResNet-56's depth, all widths scaled alike
        assert arch.spec["depths"] == [9, 9, 9] and arch.spec["widths"][0][0][0] < 16
