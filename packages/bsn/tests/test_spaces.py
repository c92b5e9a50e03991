"""BSN's spaces: the standard space tests, the equal-cost hooks (scaled, reference, size_variants,
closed-form costs) and the paper's training recipe."""
from __future__ import annotations

import random

import pytest
import torch

from bsn_nas import BSNNetwork, cnf_graph, rescnf_graph, resnet_graph
from bsn_nas.costs import full_cost
from bsn_nas.graph import make_op, op_costs
from nas_common import Arch, count_macs, count_params
from nas_common.config import resolve_config
from nas_common.spaces import get_space
from nas_common.testing import SpaceTests
from nas_common.train.config import TrainConfig
from nas_common.train.trainer import lr_factor

C10 = {"num_classes": 10, "input": [3, 32, 32]}
NETS = {"bsn-resnet": {**C10, "depth": 8, "widths": [4, 8, 8]},
        "bsn-rescnf": {**C10, "blocks": 2, "widths": [4, 8, 12], "shift": "slr"},
        "bsn-cnf": {**C10, "layers": 3, "channels": 4, "input": [3, 16, 16]}}


@pytest.fixture(params=sorted(NETS))
def space(request: pytest.FixtureRequest) -> str:
    return request.param


class TestBSNSpaces(SpaceTests):
    net_overrides = NETS


def _random_specs(space: str, n: int) -> list[dict]:
    sp = get_space(space)
    rng = random.Random(0)
    return [sp.random_spec(rng, NETS[space]) for _ in range(n)]


def test_closed_form_op_costs_equal_counted_costs() -> None:
    """Every op type, strides 1, 2 and 4, odd sizes, the upsampling edge and the classifier."""
    ops = [({"type": "basic", "cin": 3, "cout": 5, "stride": s}, (3, 9, 7)) for s in (1, 2, 4)]
    ops += [({"type": "conv_bn", "cin": 4, "cout": 6, "k": k, "stride": s}, (4, 9, 8))
            for k in (1, 3) for s in (1, 2, 4)]
    ops += [({"type": "up_conv_bn", "cin": 4, "cout": 4, "size": [9, 8]}, (4, 5, 4)),
            ({"type": "identity"}, (4, 5, 5)), ({"type": "head", "cin": 6, "num_classes": 7}, (6, 3, 3))]
    for op, shape in ops:
        m = make_op(op).eval()
        macs, params, out = op_costs(op, shape)
        assert macs == count_macs(m, shape) and params == count_params(m), op
        with torch.no_grad():
            y = m(torch.zeros(1, *shape))
        assert tuple(y.shape[1:]) == tuple(out), op


def test_closed_form_costs_of_specs_equal_counted(space: str) -> None:
    sp = get_space(space)
    for spec in _random_specs(space, 3):
        model = Arch(space, spec, NETS[space]).build()
        got = sp.costs(spec, NETS[space])
        assert got == {"macs": count_macs(model, tuple(NETS[space]["input"])), "params": count_params(model)}


def test_scaled_keeps_the_modules_and_scales_the_widths(space: str) -> None:
    sp = get_space(space)
    spec = _random_specs(space, 1)[0]
    net = sp.validate_net(NETS[space])
    macs = []
    for k in (0.5, 1.0, 2.0, 3.0):
        s2, n2 = sp.scaled(spec, net, k)
        assert s2 == spec  # module names do not depend on the widths
        key = "channels" if space == "bsn-cnf" else "widths"
        want = max(1, round(net[key] * k)) if key == "channels" else [max(1, round(w * k)) for w in net["widths"]]
        assert n2[key] == want and n2["input"] == net["input"]
        macs.append(Arch(space, s2, n2).with_costs().costs["macs"])
    assert macs == sorted(macs) and macs[-1] > 4 * macs[0]


def test_reference_is_the_papers_comparison_network(space: str) -> None:
    sp = get_space(space)
    name, spec, net = sp.reference(NETS[space])
    g = {"bsn-resnet": resnet_graph, "bsn-rescnf": rescnf_graph, "bsn-cnf": cnf_graph}[space](net)
    if space == "bsn-rescnf":  # ResNet inside the fabric: B-ResNet module for module
        assert name.startswith("ResNet") and all("_sc" not in k for k in spec["keep"])
        r = resnet_graph({**C10, "depth": 6 * net["blocks"] + 2, "widths": net["widths"]})
        assert spec["keep"] == r.gate_names
        assert sp.costs(spec, net)["macs"] == full_cost(r, "macs")
    else:  # the full super network: ResNet-depth itself, the paper's full CNF
        assert spec["keep"] == g.gate_names and "all modules" in name
        assert sp.costs(spec, net)["macs"] == full_cost(g, "macs")
    assert Arch(space, spec, net).build() is not None


def test_size_variants_keep_every_spec_valid(space: str) -> None:
    sp = get_space(space)
    variants = sp.size_variants(NETS[space])
    if space == "bsn-cnf":
        assert variants == []  # one width, which `scaled` sets; other layer counts rename the modules
        return
    assert len(variants) >= 4 and all(set(v) == {"widths"} for v in variants)
    base = sp.costs(*sp.reference(NETS[space])[1:])["macs"]
    seen = set()
    for v in variants:
        net = sp.validate_net({**NETS[space], **v})
        for spec in _random_specs(space, 2):
            assert sp.validate_spec(spec, net) == spec
        seen.add(sp.costs(sp.reference(net)[1], net)["macs"])
    assert base not in seen and len(seen) == len(variants)  # each variant is another cost step


def test_the_papers_training_recipe_is_a_train_preset() -> None:
    """`nas train ARCH --preset bsn`: SGD 0.1, x0.1 after epochs 150 and 225 (official adjust_lr), 300
    epochs, batch 64, momentum 0.9, wd 1e-4."""
    cfg = resolve_config(TrainConfig, preset="bsn")
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (300, 64, 0.1, 0.9, 1e-4)
    assert cfg.optimizer == "sgd" and not cfg.nesterov
    factors = [lr_factor(cfg, e) for e in (0, 150, 151, 225, 226, 299)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_derived_network_of_a_space_is_the_pruned_super_network() -> None:
    """The arch built by a space is BSNNetwork with exactly the kept modules (the names model.pt uses)."""
    spec = _random_specs("bsn-rescnf", 1)[0]
    model = Arch("bsn-rescnf", spec, NETS["bsn-rescnf"]).build()
    assert isinstance(model, BSNNetwork) and sorted(model.ops) == sorted(spec["keep"])
