"""Costs: published sizes, cost tables against counted costs, makespan, memory, latency, the COSTS registry."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from nas_common import count_macs, count_params, get_arch
from nas_common.costs import (
    COSTS,
    conv_macs,
    conv_params,
    expected_macs,
    get_cost,
    makespan,
    measure_latency,
    measure_memory,
    memory_breakdown,
    op_costs,
    shapes_macs,
    shapes_params,
    weight_bytes,
)
from nas_common.registry import OPS
from nas_common.spaces.resnet import ResNet, random_resnet_spec, resnet_conv_shapes, resnet_spec


# ---- published figures ---------------------------------------------------------------------------------
def test_darts_v2_has_3_3m_params():
    arch = get_arch("darts-v2")
    assert arch.net["C"] == 36 and arch.net["layers"] == 20
    assert count_params(arch.build()) == pytest.approx(3.3e6, rel=0.02)  # Liu et al. 2019: 3.3M


# ---- closed forms ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("c_in,c_out,k,stride,groups", [(3, 16, 3, 1, 1), (16, 32, 1, 2, 1), (32, 32, 5, 2, 32),
                                                        (8, 12, (7, 1), 1, 4)])
def test_conv_formulas_equal_counted(c_in, c_out, k, stride, groups):
    kh, kw = (k, k) if isinstance(k, int) else k
    conv = nn.Conv2d(c_in, c_out, k, stride, (kh // 2, kw // 2), groups=groups, bias=False)
    h_out = (17 + 2 * (kh // 2) - kh) // stride + 1
    w_out = (17 + 2 * (kw // 2) - kw) // stride + 1
    assert conv_macs(c_in, c_out, k, h_out, w_out, groups) == count_macs(conv, (c_in, 17, 17))
    assert conv_params(c_in, c_out, k, groups) == count_params(conv)
    assert conv_params(c_in, c_out, k, groups, bias=True, bn=True) == count_params(conv) + 3 * c_out


# ---- op costs ----------------------------------------------------------------------------------------------
def test_op_costs_skip_pool_and_convs():
    skip2 = op_costs("skip_connect", 16, 2, 32, 32)
    assert skip2["params"] > 0 and skip2["macs"] > 0          # FactorizedReduce
    assert op_costs("skip_connect", 16, 1, 32, 32) == {"macs": 0, "params": 0}
    for pool in ("max_pool_3x3", "avg_pool_3x3"):
        assert op_costs(pool, 16, 2, 32, 32) == {"macs": 0, "params": 0}
    assert op_costs("none", 16, 1, 32, 32) == {"macs": 0, "params": 0}
    # sep_conv_3x3 = twice (depthwise 3x3 + pointwise 1x1 + BN), the first pair at the stride
    sep = op_costs("sep_conv_3x3", 16, 1, 32, 32)
    assert sep["macs"] == 2 * (conv_macs(16, 16, 3, 32, 32, groups=16) + conv_macs(16, 16, 1, 32, 32))
    assert sep["params"] == 2 * (conv_params(16, 16, 3, 16) + conv_params(16, 16, 1, bn=True))
    # the skip replacement of a conv at stride 2 costs less than the conv, more than nothing
    assert 0 < skip2["macs"] < op_costs("sep_conv_3x3", 16, 2, 32, 32)["macs"]


@pytest.mark.parametrize("op", [n for n in OPS.names()])
def test_op_costs_cover_every_registered_op(op):
    for stride in (1, 2):
        c = op_costs(op, 8, stride, 8, 8)
        assert set(c) == {"macs", "params"} and c["macs"] >= 0 and c["params"] >= 0
        mod = OPS.get(op)(8, stride, True)
        assert c["params"] == count_params(mod)
    assert op_costs(op, 8, 1, 8, 8) is not op_costs(op, 8, 1, 8, 8)  # callers may mutate their dict


# ---- resnet shapes -----------------------------------------------------------------------------------------
def _random_specs():
    rng = random.Random(7)
    specs = [random_resnet_spec(rng, resnet_spec(20)) for _ in range(3)]
    specs.append(random_resnet_spec(rng, resnet_spec(164)))
    s = random_resnet_spec(rng, resnet_spec(32))
    s["shortcuts"] = [[i % 2 == 0 for i in range(d)] for d in s["depths"]]
    specs.append(s)
    return specs


@pytest.mark.parametrize("spec", _random_specs())
def test_resnet_conv_shapes_equal_counted_costs(spec):
    model = ResNet(spec, num_classes=10)
    shapes = resnet_conv_shapes(spec, (3, 32, 32), 10)
    assert shapes_macs(shapes) == count_macs(model, (3, 32, 32))
    assert shapes_params(shapes) == count_params(model)
    modules = dict(model.named_modules())
    for r in shapes:  # names, channels and strides agree with the built modules
        m = modules[r.name]
        if r.kind == "conv":
            assert (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) == (r.c_in, r.c_out, r.k, r.stride)
        else:
            assert (m.in_features, m.out_features) == (r.c_in, r.c_out)
        if r.in_from >= 0:
            assert shapes[r.in_from].c_out == r.c_in
        if r.out_from >= 0:
            assert shapes[r.out_from].c_out == r.c_out


def test_resnet_conv_shapes_imagenet_small_input():
    rng = random.Random(1)
    spec = random_resnet_spec(rng, resnet_spec(50, "imagenet"))
    model = ResNet(spec, num_classes=100)
    shapes = resnet_conv_shapes(spec, (3, 65, 47), 100)
    assert shapes_macs(shapes) == count_macs(model, (3, 65, 47))


def test_expected_macs_is_exact_for_one_hot_and_differentiable():
    spec = resnet_spec(20)
    shapes = resnet_conv_shapes(spec)
    widths = torch.tensor([float(r.c_out) for r in shapes], requires_grad=True)
    e = expected_macs(shapes, widths)
    assert e.item() == pytest.approx(shapes_macs(shapes))
    e.backward()
    own = torch.tensor([r.out_from == r.index for r in shapes])  # projections share their block's last width
    assert (widths.grad[own] > 0).all() and (widths.grad[~own] == 0).all()
    # dropping the third block of every stage with probability 1 removes exactly its convs
    keep = torch.tensor([0.0 if r.block == 2 else 1.0 for r in shapes])
    removed = sum(r.macs for r in shapes if r.block == 2)
    assert expected_macs(shapes, widths.detach(), keep).item() == pytest.approx(shapes_macs(shapes) - removed)
    # expected widths halfway between two choices give a MAC count between their MAC counts
    half = widths.detach() * 0.75
    assert 0.5 * shapes_macs(shapes) < expected_macs(shapes, half).item() < shapes_macs(shapes)
    with pytest.raises(ValueError, match="one entry per record"):
        expected_macs(shapes, widths[:-1])


# ---- makespan ------------------------------------------------------------------------------------------------
def test_makespan_chain_is_the_sum():
    nodes = ["a", "b", "c", "d"]
    edges = [("a", "b"), ("b", "c"), ("c", "d")]
    assert makespan(nodes, edges, None, 1) == 4
    assert makespan(nodes, edges, None, 8) == 4
    assert makespan(nodes, edges, {"a": 2, "b": 3, "c": 1, "d": 4}, 4) == 10


def test_makespan_parallel_branches():
    nodes = ["in", "x", "y", "z", "out"]
    edges = [("in", "x"), ("in", "y"), ("in", "z"), ("x", "out"), ("y", "out"), ("z", "out")]
    costs = {"in": 0, "x": 1, "y": 3, "z": 2, "out": 0}   # in/out: identity, no step
    assert makespan(nodes, edges, costs, 3) == 3         # max of the branches
    assert makespan(nodes, edges, costs, 1) == 6         # one worker: the sum
    assert makespan(nodes, edges, None, 3) == 3          # unit costs: in, {x,y,z}, out
    assert makespan(nodes, edges, None, 2) == 4          # in, {x,y}, {z}, out
    assert isinstance(makespan(nodes, edges, None, 2), int)
    assert makespan(nodes, edges, lambda n: 0.5, 3) == pytest.approx(1.5)


def test_makespan_identity_skips_take_no_step():
    # a residual chain: block_i and its skip in parallel, then an add; identity skips cost 0
    nodes, edges, costs = ["input"], [], {"input": 0}
    prev = "input"
    for i in range(3):
        nodes += [f"block{i}", f"skip{i}", f"add{i}"]
        edges += [(prev, f"block{i}"), (prev, f"skip{i}"), (f"block{i}", f"add{i}"), (f"skip{i}", f"add{i}")]
        costs.update({f"block{i}": 1, f"skip{i}": 0, f"add{i}": 1})
        prev = f"add{i}"
    assert makespan(nodes, edges, costs, 2) == 6
    assert makespan(nodes, edges, {**costs, "skip1": 1}, 1) == 7


def test_makespan_lower_bounds_on_random_dags():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 15)
        nodes = list(range(n))
        edges = [(i, j) for j in range(n) for i in range(j) if rng.random() < 0.3]
        costs = {i: rng.randint(0, 3) for i in nodes}
        k = rng.randint(1, 4)
        span = makespan(nodes, edges, costs, k)
        # critical path
        longest = {}
        for j in nodes:
            longest[j] = costs[j] + max((longest[i] for i, jj in edges if jj == j), default=0)
        assert span >= max(longest.values())
        assert span >= sum(costs.values()) / k
        assert span <= sum(costs.values())
        assert makespan(nodes, edges, costs, n + 1) == max(longest.values())  # enough workers: critical path


def test_makespan_errors():
    with pytest.raises(ValueError, match="cycle"):
        makespan(["a", "b"], [("a", "b"), ("b", "a")], None, 2)
    with pytest.raises(ValueError, match="not in dag_nodes"):
        makespan(["a"], [("a", "b")], None, 2)
    with pytest.raises(ValueError, match="k_workers"):
        makespan(["a"], [], None, 0)
    with pytest.raises(ValueError, match="negative"):
        makespan(["a"], [], {"a": -1}, 1)


# ---- memory and latency ------------------------------------------------------------------------------------
def test_memory_on_cpu_is_weights_plus_hooked_activations():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 64, 4))
    m = memory_breakdown(model, (3, 8, 8), batch_size=2)
    assert m["method"] == "hook-estimate"
    assert m["weights"] == weight_bytes(model) == 4 * (sum(p.numel() for p in model.parameters()) + 8 + 8) + 8
    assert m["activations"] == 4 * 2 * (8 * 64 * 4 + 4)  # conv, bn, relu, flatten outputs + logits
    assert m["total"] == m["weights"] + m["activations"] == measure_memory(model, (3, 8, 8), batch_size=2)
    assert model.training  # restored


def test_memory_grows_with_batch_and_depth():
    small = get_arch("resnet20").build()
    a1 = memory_breakdown(small, (3, 32, 32), 1)["activations"]
    assert memory_breakdown(small, (3, 32, 32), 4)["activations"] == 4 * a1
    assert measure_memory(get_arch("resnet32").build(), (3, 32, 32)) > measure_memory(small, (3, 32, 32))


def test_latency_is_a_positive_median():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    t = measure_latency(model, (3, 16, 16), batch_size=2, warmup=1, repeats=3)
    assert isinstance(t, float) and 0 < t < 5
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, (3, 16, 16), repeats=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_memory_and_latency_on_cuda():
    model = get_arch("resnet20").build()
    m = memory_breakdown(model, (3, 32, 32), 8, "cuda")
    assert m["method"] == "cuda-peak" and m["activations"] > 0
    assert measure_latency(model, (3, 32, 32), 8, "cuda", warmup=2, repeats=5) > 0


# ---- registry ---------------------------------------------------------------------------------------------------
def test_costs_registry_measures_by_key():
    from nas_common.costs import makespan, measure_cost
    from nas_common.errors import BudgetError

    assert {"macs", "params", "memory", "latency", "distributed"} <= set(COSTS.names())
    model = get_arch("resnet20").build()
    assert measure_cost(model, "macs", (3, 32, 32)) == count_macs(model, (3, 32, 32))
    assert measure_cost(model, "params", (3, 32, 32)) == count_params(model)
    assert measure_cost(model, "memory", (3, 32, 32)) > 0
    assert measure_cost(nn.Linear(2, 2), "latency:cpu", (2,)) > 0
    with pytest.raises(KeyError, match="did you mean 'macs'"):
        get_cost("mac")
    with pytest.raises(BudgetError, match="does not describe its DAG"):
        measure_cost(model, "distributed:2", (3, 32, 32))

    class Dag(nn.Sequential):  # a network that describes its module DAG: a chain a -> b and c alone
        def module_dag(self):
            return ["a", "b", "c"], [("a", "b")], {"a": 1, "b": 1, "c": 1}

    assert measure_cost(Dag(), "distributed:2", (1,)) == makespan(["a", "b", "c"], [("a", "b")], None, 2) == 2


# ---- the fast counter agrees with FlopCounterMode ------------------------------------------------------------
class _Functional(nn.Module):
    """Convs and matmuls outside nn.Conv2d/nn.Linear (masked weights, einsum): must be counted too."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.m = nn.Parameter(torch.randn(8, 5))
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.bn(torch.nn.functional.conv2d(x, self.w * (self.w > 0), stride=2))
        z = torch.einsum("bchw,cd->bd", y, self.m)
        return torch.nn.functional.conv_transpose2d(y, self.w).mean() + z @ self.m.t()


@pytest.mark.parametrize("make,shape", [(lambda: get_arch("darts-v2").build(), (3, 32, 32)),
                                        (lambda: get_arch("resnet20").build(), (3, 32, 32)),
                                        (lambda: get_arch("resnet50").build(), (3, 64, 64)),
                                        (_Functional, (3, 17, 17))])
def test_count_macs_equals_flop_counter_mode(make, shape):
    from nas_common.costs.macs import count_flops_reference

    model = make()
    macs = count_macs(model, shape)
    assert macs > 0 and 2 * macs == count_flops_reference(model, shape)
