"""ISTA-NAS: compressed code, sparse search network, derive, one-stage absorption, conformance."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ista_nas import ISTA_PRIMITIVES, CompressedCode, ISTAConfig, ISTASearch, genotype_from_support, support_weights
from ista_nas.network import DARTS_BN_SPACE, absorb, final_bn, one_stage_supernet, search_supernet, set_op_bn_trainable
from nas_common import Task, get_dataset, load_arch, load_model
from nas_common.config import resolve_config
from nas_common.errors import ConfigError
from nas_common.search import run_search
from nas_common.testing import SearchMethodTests

torch.set_num_threads(1)

MICRO = {"layers": 2, "C": 4, "epochs": 2, "batch_size": 16, "eval_C": 4, "eval_layers": 2}


class TestISTAConformance(SearchMethodTests):
    method = "ista-nas"
    micro = MICRO


# ---- the compressed code -------------------------------------------------------------------------
def test_code_shapes_and_fixed_measurements() -> None:
    a, b = CompressedCode(seed=3), CompressedCode(seed=3)
    assert a.A.shape == (2, 4, 7, 35) and a.b.shape == (2, 4, 7)
    assert [int(r.sum()) for r in a.mask] == [14, 21, 28, 35]
    torch.testing.assert_close(a.A, b.A)  # drawn from the seed: the same after a restart
    real = a.A[0, 1][:, :21]
    assert float(real.min()) >= 0.0 and float(real.max()) < 1.0  # U[0, 1)
    assert bool((a.A[0, 1][:, 21:] == 0).all())  # padding


def test_weights_formula_and_gradient() -> None:
    code = CompressedCode(seed=0)
    z, _ = code.recover(1e-5)
    code.set_code(z)
    assert code.support.shape == (2, 4, 2)
    assert bool((code.support < torch.tensor([14, 21, 28, 35]).view(1, 4, 1)).all())
    w = code.weights()
    # reference: w_S = z_S + A_S^T (b - A z_S), written out for one node
    t, i = 1, 2
    S = code.support[t, i]
    A_S = code.A[t, i][:, S]
    z_S = code.z[t, i][S]
    ref = z_S + A_S.T @ (code.b[t, i] - A_S @ z_S)
    torch.testing.assert_close(w[t, i], ref)
    w.sum().backward()
    assert code.b.grad is not None and bool(code.b.grad.abs().sum() > 0)


def test_weights_equal_the_code_when_b_is_its_measurement() -> None:
    code = CompressedCode(seed=1)
    z = torch.zeros(2, 4, 35)
    z[..., 0], z[..., 5] = 0.3, -0.2
    code.set_code(z)
    with torch.no_grad():
        code.b.copy_((code.A @ z.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(code.weights(), torch.tensor([0.3, -0.2]).expand(2, 4, 2))


def test_support_weights_batches_any_shape() -> None:
    A, b, z = torch.rand(3, 5, 7, 10), torch.randn(3, 5, 7), torch.randn(3, 5, 10)
    sup = z.abs().topk(2, -1).indices
    w = support_weights(A, b, z, sup)
    assert w.shape == (3, 5, 2)


# ---- the sparse search network -----------------------------------------------------------------
def _count_op_calls(net: nn.Module) -> tuple[dict[int, int], list]:
    calls: dict[int, int] = {}
    handles = []
    for c, cell in enumerate(net.cells):
        calls[c] = 0
        for edge in cell.edges:
            for op in edge:
                def hook(_m, _i, _o, c=c):
                    calls[c] += 1
                handles.append(op.register_forward_hook(hook))
    return calls, handles


@pytest.mark.parametrize("one_stage", [False, True])
def test_search_network_runs_exactly_two_ops_per_node(one_stage: bool) -> None:
    net = (one_stage_supernet(4, 10, 3, 4, 3, auxiliary=False) if one_stage
           else search_supernet(4, 10, 3, 4, 3))
    assert net.n_ops == 7 and net.primitives == ISTA_PRIMITIVES  # no `none`
    code = CompressedCode(seed=0)
    z, _ = code.recover(1e-5)
    code.set_code(z)
    calls, handles = _count_op_calls(net)
    normal, reduce = code.choices()
    out = net.forward_sparse(torch.randn(2, 3, 16, 16), normal, reduce)
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape == (2, 10)
    for h in handles:
        h.remove()
    assert all(n == 2 * 4 for n in calls.values()), calls  # 4 nodes x 2 ops in every cell


def test_derived_genotype_has_two_inputs_per_node(tmp_path: Path) -> None:
    ds = get_dataset("cifar10-mini").subset(64, 16)
    result, arch = run_search("ista-nas", Task(ds), out=tmp_path / "run", preset="tiny", overrides=MICRO,
                              progress=False)
    for cell in ("normal", "reduce"):
        ops = arch.spec[cell]
        assert len(ops) == 2 * 4
        for i in range(4):
            for op, j in ops[2 * i: 2 * i + 2]:
                assert op in ISTA_PRIMITIVES and 0 <= j < i + 2
    assert arch.space == "darts" and arch.net["C"] == 4 and arch.net["layers"] == 2
    # derive is top-2 |z| of the final code
    z = result.state["z"]
    top = z.abs().masked_fill(~CompressedCode().mask.expand_as(z), -1).topk(2, -1).indices.sort(-1).values
    assert arch.spec == genotype_from_support(top.tolist())
    assert load_arch(tmp_path / "run" / "arch.json") == arch


# ---- one-stage: absorption -------------------------------------------------------------------------
def test_absorbed_network_computes_the_same_outputs() -> None:
    torch.manual_seed(0)
    net = one_stage_supernet(4, 10, 3, 4, 3, auxiliary=True)
    code = CompressedCode(seed=2)
    with torch.no_grad():
        code.b.mul_(3.0)  # weights far from 1, of both signs
    z, _ = code.recover(1e-5)
    code.set_code(z)
    support = code.support.tolist()
    for t in range(2):
        for i in range(4):
            set_op_bn_trainable(net, t, i, [(c // 7, c % 7) for c in support[t][i]])
    with torch.no_grad():  # trained-looking BNs: random affine parameters and running statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    normal, reduce = code.choices()
    net.train()
    for _ in range(3):
        net.forward_sparse(torch.randn(8, 3, 16, 16), normal, reduce)
    net.eval()
    x = torch.randn(4, 3, 16, 16)
    w = code.weights().detach()
    assert float(w.abs().min()) > 0 and float((w - 1).abs().max()) > 0.1
    with torch.no_grad():
        before = net.forward_sparse(x, *code.choices(w))
    spec = genotype_from_support(support)
    netcfg = {"C": 4, "layers": 3, "auxiliary": True, "num_classes": 10, "input": [3, 16, 16]}
    model = absorb(net, w, support, spec, netcfg).eval()
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    # the absorbed network is exactly what the darts-bn arch builds
    fresh = DARTS_BN_SPACE.build(spec, netcfg)
    fresh.load_state_dict(model.state_dict())
    assert [type(m) for m in fresh.modules()] == [type(m) for m in model.modules()]


def test_one_stage_bns_frozen_until_the_node_freezes() -> None:
    net = one_stage_supernet(4, 10, 3, 4, 3, auxiliary=False)
    bn = final_bn(net.cells[0].edges[0][0])
    assert not bn.weight.requires_grad and float(bn.weight.mean()) == 1.0 and float(bn.bias.abs().sum()) == 0.0
    set_op_bn_trainable(net, 0, 0, [(0, 0)])
    assert bn.weight.requires_grad


def test_one_stage_search_leaves_an_evaluable_network(tmp_path: Path) -> None:
    ds = get_dataset("cifar10-mini").subset(64, 16)
    over = {**MICRO, "mode": "one-stage", "one_stage.batch_size": 16, "one_stage.epochs": 1,
            "one_stage.max_search_epochs": 2}
    result, arch = run_search("ista-nas", Task(ds), out=tmp_path / "one", preset="tiny", overrides=over,
                              progress=False)
    assert arch.space == "darts-bn" and result.model is not None
    model = load_model(tmp_path / "one")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), result.model.eval()(x))
    # resumed after the first (search) epoch: the same network
    from nas_common.runs import RunInterrupted

    with pytest.raises(RunInterrupted):
        run_search("ista-nas", Task(ds), out=tmp_path / "again", preset="tiny", overrides=over, progress=False,
                   interrupt_after=1)
    result2, arch2 = run_search("ista-nas", Task(ds), out=tmp_path / "again", preset="tiny", overrides=over,
                                progress=False, resume=True)
    assert arch2 == arch
    for a, b in zip(result.model.state_dict().values(), result2.model.state_dict().values(), strict=False):
        torch.testing.assert_close(a, b)


# ---- config ------------------------------------------------------------------------------------------
def test_config_presets_and_errors() -> None:
    paper = resolve_config(ISTAConfig, "paper")
    assert (paper.C, paper.layers, paper.epochs, paper.batch_size, paper.m, paper.gamma) == (16, 8, 50, 256, 7, 1e-5)
    assert (paper.lr, paper.arch_lr, paper.eval_C, paper.eval_layers) == (0.1, 6e-4, 36, 20)
    assert (paper.one_stage.batch_size, paper.one_stage.epochs, paper.one_stage.freeze_tol) == (96, 600, 1e-3)
    one = resolve_config(ISTAConfig, "tiny", overrides=["mode=one-stage", "one_stage.epochs=3"])
    assert one.mode == "one-stage" and one.one_stage.epochs == 3
    with pytest.raises(ConfigError, match="mode"):
        resolve_config(ISTAConfig, "paper", overrides=["mode=three-stage"])
    with pytest.raises(ConfigError, match="train_fraction"):
        resolve_config(ISTAConfig, "paper", overrides=["train_fraction=1.5"])
    assert ISTASearch.name == "ista-nas" and ISTASearch.config_cls is ISTAConfig
