"""Training-mode numerics: every execution mode computes the same function, gradients and BN statistics."""
from __future__ import annotations

import pytest
import torch

from bsn_nas import BSNConfig, BSNNetwork, MaskedBatchNorm2d, cnf_graph, rescnf_graph, resnet_graph
from bsn_nas.search import execution_mode
from nas_common.errors import ConfigError

MICRO_NET = {"depth": 8, "widths": [4, 8, 8], "num_classes": 10, "input": [3, 32, 32]}
RESCNF_NET = {"blocks": 2, "widths": [4, 8, 8], "shift": "slr", "num_classes": 10, "input": [3, 16, 16]}
CNF_NET = {"layers": 3, "channels": 4, "num_classes": 10, "input": [3, 16, 16]}
MODES = ("dense", "skip", "gather", "auto")


def _run(net: BSNNetwork, x: torch.Tensor, y: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
    out = net(x, active=act)
    torch.nn.functional.cross_entropy(out, y).backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    bufs = {k: b.clone() for k, b in net.named_buffers()}
    return out.detach(), grads, bufs


@pytest.mark.parametrize("make,net", [(resnet_graph, MICRO_NET), (rescnf_graph, RESCNF_NET), (cnf_graph, CNF_NET)])
def test_execution_modes_agree_in_training(make, net) -> None:  # noqa: ANN001
    """Logits, weight gradients and BatchNorm running statistics agree across modes in train mode, with
    modules used by part of the batch (the old dense mode differed from gather by ~7e-3 in the logits)."""
    torch.manual_seed(0)
    g = make(net)
    b = 8
    x = torch.randn(b, *net["input"])
    y = torch.randint(0, 10, (b,))
    gates = torch.rand(b, g.num_gates, generator=torch.Generator().manual_seed(1)) < 0.7
    gates[:, 0] = True
    act = g.active(gates)
    partial = (act.sum(0) > 0) & (act.sum(0) < b)
    assert int(partial.sum()) >= 3, "the test needs modules that part of the batch uses"
    ref = BSNNetwork(g, mode="dense").train()
    results = {}
    for mode in MODES:
        m = BSNNetwork(g, mode=mode).train()
        m.load_state_dict(ref.state_dict())
        results[mode] = _run(m, x, y, act)
    out0, grads0, bufs0 = results["dense"]
    for mode in MODES[1:]:
        out, grads, bufs = results[mode]
        torch.testing.assert_close(out, out0, atol=2e-5, rtol=1e-4)
        assert set(grads) <= set(grads0)  # gather/skip leave unused modules without a gradient
        for k, v in grads0.items():
            torch.testing.assert_close(grads.get(k, torch.zeros_like(v)), v, atol=2e-5, rtol=1e-4, msg=k)
        for k, v in bufs0.items():
            torch.testing.assert_close(bufs[k], v, atol=1e-5, rtol=1e-4, msg=k)


def test_masked_batch_norm_equals_batch_norm_on_the_masked_examples() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    bn, ref = MaskedBatchNorm2d(3).train(), torch.nn.BatchNorm2d(3).train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    ref.load_state_dict(bn.state_dict())
    y = bn(x, mask)
    keep = mask.bool()
    torch.testing.assert_close(y[keep], ref(x[keep]))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == 1
    before = bn.running_mean.clone()
    bn(x, torch.zeros(6))  # nobody uses the module: no update, no NaN
    torch.testing.assert_close(bn.running_mean, before)
    assert int(bn.num_batches_tracked) == 1
    torch.testing.assert_close(bn.eval()(x, mask), ref.eval()(x))  # eval: the running statistics, mask unused


def test_official_whole_batch_statistics_are_an_option_of_dense_mode() -> None:
    """bn_stats="batch" reproduces the official code's numerics (BN over the whole batch, zeros included),
    which differ from per-example sub-networks; it exists only with dense execution."""
    torch.manual_seed(0)
    g = resnet_graph(MICRO_NET)
    x = torch.randn(8, 3, 32, 32)
    gates = torch.ones(8, g.num_gates, dtype=torch.bool)
    gates[:4, g.gate_names.index("s1b0_block")] = False  # one block off for half the batch
    act = g.active(gates)
    active_stats = BSNNetwork(g, mode="gather").train()
    batch_stats = BSNNetwork(g, mode="dense", bn_stats="batch").train()
    batch_stats.load_state_dict(active_stats.state_dict())
    with torch.no_grad():
        diff = (batch_stats(x, active=act) - active_stats(x, active=act)).abs().max()
    assert diff > 1e-4
    with pytest.raises(ValueError, match="dense"):
        BSNNetwork(g, mode="gather", bn_stats="batch")
    with pytest.raises(ConfigError, match="bn_stats='batch'"):
        BSNConfig(bn_stats="batch", execution="gather")
    assert execution_mode(BSNConfig(bn_stats="batch"), torch.device("cpu")) == "dense"


def test_auto_execution_decides_on_the_host_only_on_the_cpu() -> None:
    cfg = BSNConfig()
    assert execution_mode(cfg, torch.device("cpu")) == "auto"
    assert execution_mode(cfg, torch.device("cuda")) == "dense"  # no host sync in a step on a GPU
    assert execution_mode(BSNConfig(execution="skip"), torch.device("cuda")) == "skip"  # asked for: its one copy
