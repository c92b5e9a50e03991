"""The paper's super networks and FLOP count: ResCNF reaches the B-ResNet row, B-CNF is the paper's size."""
from __future__ import annotations

import pytest
import torch

from bsn_nas import BSNConfig, BSNNetwork, cost_table, rescnf_graph, resnet_graph
from bsn_nas.costs import PAPER_COST, count_paper_flops, full_cost, pattern_costs
from bsn_nas.search import supernet_graph
from nas_common import Arch, Task, count_macs, get_arch, get_dataset
from nas_common.costs import measure_cost
from nas_common.errors import ArchFileError, ConfigError
from nas_common.registry import SPACES

CIFAR = {"num_classes": 10, "input": [3, 32, 32]}
R20_PAPER = 40.9e6      # the paper's ResNet-20 row
B_RESNET_PAPER = 39.25e6  # the paper's B-ResNet row (CIFAR-10)
CNF_PAPER = 406e6       # the paper's CNF row


def _paper_graph(**overrides: object) -> object:
    task = Task(dataset=get_dataset("cifar10-mini"))
    return supernet_graph(task, BSNConfig(**overrides))


def test_paper_flops_count_additions_beside_macs() -> None:
    """ResNet-20 is 40.90M FLOPs with the paper's count (the paper's 40.9M) and 40.81M MACs; the count is
    registered in nas_common's cost registry, and B-ResNet-20's table gives the same numbers."""
    r20 = get_arch("resnet20").build()
    macs = count_macs(r20, (3, 32, 32))
    paper = measure_cost(r20, PAPER_COST, (3, 32, 32))
    # 9 residual additions: 3 x (16x32x32 + 32x16x16 + 64x8x8) elements
    assert paper - macs == 3 * (16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8)
    assert paper == pytest.approx(R20_PAPER, rel=2e-3)
    g = resnet_graph({"depth": 20, "widths": [16, 32, 64], **CIFAR})
    assert full_cost(g, "paper") == paper
    assert full_cost(g, "macs") == macs
    # a skip dropped: that block's addition is gone too (one input left)
    keep = [nm for nm in g.gate_names if nm != "s0b1_skip"]
    assert pattern_costs(g, keep)["paper"] == paper - 16 * 32 * 32
    assert count_paper_flops(BSNNetwork(g, keep=g.prune(keep)), (3, 32, 32)) == paper - 16 * 32 * 32


def test_paper_preset_super_network_is_rescnf_and_reaches_the_b_resnet_row() -> None:
    """From ResNet-20 the reachable FLOPs jump over 39.25M; the paper preset's ResCNF reaches it."""
    g = _paper_graph()
    assert g.space == "bsn-rescnf" and g.num_gates == 46
    table = cost_table(g)
    names = g.gate_names
    classic = torch.tensor(["_sc" not in nm for nm in names])  # ResNet-20 inside ResCNF
    assert float(table.cost("paper", g.active(classic[None]))[0]) == pytest.approx(full_cost(
        resnet_graph({"depth": 20, "widths": [16, 32, 64], **CIFAR}), "paper"))
    rows = []
    for r in (1, 2, 3):  # every pattern within 3 gate flips of ResNet-20
        flips = torch.combinations(torch.arange(len(names)), r)
        base = classic.expand(len(flips), -1).clone()
        rows.append(base.scatter(1, flips, ~base.gather(1, flips)))
    pats = torch.cat(rows)
    act = g.active(pats)
    cost = table.cost("paper", act)
    gap = torch.where(act[:, -1], (cost - B_RESNET_PAPER).abs(), torch.full_like(cost, float("inf")))
    best = int(gap.argmin())
    assert float(gap[best]) < 0.01e6, float(cost[best])
    keep = [nm for nm, on in zip(names, pats[best].tolist(), strict=True) if on]
    derived = BSNNetwork(g, keep=g.prune(keep))
    assert count_paper_flops(derived, (3, 32, 32)) == pytest.approx(B_RESNET_PAPER, abs=0.01e6)
    assert count_macs(derived, (3, 32, 32)) < count_paper_flops(derived, (3, 32, 32))

    # B-ResNet-20: a pattern connects iff each of its 9 blocks keeps its branch, its skip or both; over
    # all 3^9 such patterns, nothing is within 1M FLOPs of the paper's row
    r = resnet_graph({"depth": 20, "widths": [16, 32, 64], **CIFAR})
    states = torch.tensor([[True, False], [False, True], [True, True]])  # (branch, skip) of one block
    digits = (torch.arange(3 ** 9)[:, None] // 3 ** torch.arange(9)) % 3
    allp = states[digits].flatten(1)  # gates in B-ResNet's order: block, skip of each block in turn
    act_r = r.active(allp)
    assert bool(act_r[:, -1].all())
    cost_r = cost_table(r).cost("paper", act_r)
    assert float((cost_r - B_RESNET_PAPER).abs().min()) > 1e6


def test_paper_preset_b_cnf_is_the_papers_full_cnf() -> None:
    """8 layers x 6 scales x 45 channels: the full fabric is the paper's CNF, 406M FLOPs (not 3.27G MACs)."""
    g = _paper_graph(supernet="cnf")
    assert g.space == "bsn-cnf" and g.net["layers"] == 8
    assert full_cost(g, "paper") == pytest.approx(CNF_PAPER, rel=5e-3)
    assert full_cost(g, "macs") < full_cost(g, "paper")


def test_rescnf_space_validates_and_builds(tmp_path) -> None:  # noqa: ANN001
    assert "bsn-rescnf" in SPACES
    net = {"blocks": 2, "widths": [4, 8, 16], "shift": "rls", **CIFAR}
    spec = {"keep": ["s0b0_block", "s0b1_skip", "s1b1_sc0_block", "s2b0_sc1_skip", "s2b1_skip"]}
    arch = Arch("bsn-rescnf", spec, net)
    model = arch.build()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count_paper_flops(model, (3, 32, 32)) == pytest.approx(
        pattern_costs(rescnf_graph({**net, "shift": "slr"}), spec["keep"])["paper"])
    assert SPACES.get("bsn-rescnf").describe(Arch("bsn-rescnf", spec, net).spec).startswith("ResCNF: 1 conv blocks")
    with pytest.raises(ArchFileError, match="net.shift"):
        Arch("bsn-rescnf", spec, {**net, "shift": "sx"}).build()
    with pytest.raises(ArchFileError, match="net.blocks"):
        Arch("bsn-rescnf", spec, {**net, "blocks": 0}).build()
    with pytest.raises(ConfigError, match="shift"):
        BSNConfig(shift="slrs")


def test_rescnf_shortcuts_follow_the_official_source_rules() -> None:
    """Stage b > 0, block n of 3, shift slr: sources (s, l, r) in stage b-1 are the outputs of blocks
    1-n, 2-n, -n, where -1 is the stage's input (the stem for b = 1); stride 2 per stage crossed."""
    g = rescnf_graph({"blocks": 3, "widths": [16, 32, 64], "shift": "slr", **CIFAR})
    src = {n.name: g.nodes[n.inputs[0]].name for n in g.nodes if "_sc" in n.name and n.name.endswith("_block")}
    assert src == {
        "s1b0_sc0_block": "s0b1_add", "s1b0_sc1_block": "s0b0_add",
        "s1b1_sc0_block": "s0b0_add", "s1b1_sc1_block": "s0b1_add", "s1b1_sc2_block": "input",
        "s1b2_sc0_block": "input", "s1b2_sc1_block": "s0b0_add",
        "s2b0_sc0_block": "s1b1_add", "s2b0_sc1_block": "s1b0_add",
        "s2b1_sc0_block": "s1b0_add", "s2b1_sc1_block": "s1b1_add", "s2b1_sc2_block": "s0b2_add",
        "s2b2_sc0_block": "s0b2_add", "s2b2_sc1_block": "s1b0_add"}
    strides = {n.name: n.op["stride"] for n in g.nodes if "_sc" in n.name}
    assert strides["s2b2_sc0_block"] == 4 and strides["s2b2_sc0_skip"] == 4 and strides["s1b2_sc0_block"] == 2
    # with every shortcut off it is B-ResNet-20, module for module
    r = resnet_graph({"depth": 20, "widths": [16, 32, 64], **CIFAR})
    classic = [nm for nm in g.gate_names if "_sc" not in nm]
    assert classic == r.gate_names
    assert pattern_costs(g, classic) == pattern_costs(r, r.gate_names)
