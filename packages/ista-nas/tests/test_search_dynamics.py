"""The search loops' behaviour: data halves, step order, freezing, size guard, one-stage schedule, host syncs."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ista_nas.search as search_mod
from ista_nas import CompressedCode, ISTAConfig, ISTASearch, genotype_from_support
from ista_nas.network import DARTS_BN_SPACE, one_stage_supernet, op_bns, search_supernet, set_op_bn_trainable
from nas_common import Task, get_dataset
from nas_common.config import resolve_config
from nas_common.runs import RunInterrupted
from nas_common.search import run_search
from nas_common.spaces.darts import edge_index

torch.set_num_threads(1)

MICRO = {"layers": 2, "C": 4, "epochs": 2, "batch_size": 16, "eval_C": 4, "eval_layers": 2}
ONE = {**MICRO, "mode": "one-stage", "one_stage.batch_size": 16}
PKG = Path(search_mod.__file__).parent
STEP_FILES = {str(PKG / f) for f in ("search.py", "coding.py", "network.py")}  # not lasso.py: per epoch


def _ds(n: int = 64):
    return get_dataset("cifar10-mini").subset(n, 16)


# ---- no host sync in a search step --------------------------------------------------------------------------
def _count_host_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record every call that would synchronise with the host (or copy host -> device) made from the
    package's search code: Tensor.item/tolist/cpu/numpy/bool/float/int/nonzero, torch.tensor/nonzero/..."""
    calls: list[tuple[str, int]] = []

    def wrap(name: str, orig):  # noqa: ANN001, ANN202
        def f(*a, **k):  # noqa: ANN002, ANN003, ANN202
            fr = sys._getframe(1)
            if fr.f_code.co_filename in STEP_FILES:
                calls.append((name, fr.f_lineno))
            return orig(*a, **k)
        return f

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    for name in ("tensor", "nonzero", "masked_select", "unique", "multinomial"):
        monkeypatch.setattr(torch, name, wrap(f"torch.{name}", getattr(torch, name)))
    return calls


@pytest.mark.parametrize("mode", ["two-stage", "one-stage"])
def test_no_host_sync_per_search_step(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same search on 2x the data (2x the steps per epoch) makes exactly as many host syncs: none
    of them is per step (the old per-step torch.tensor(float(n), device=...) made it grow)."""
    over = ({**MICRO, "epochs": 1} if mode == "two-stage" else
            {**ONE, "one_stage.freeze_tol": 1e9, "one_stage.epochs": 1})
    counts = []
    for n in (32, 64):
        with monkeypatch.context() as mp:
            calls = _count_host_syncs(mp)
            run_search("ista-nas", Task(_ds(n)), out=tmp_path / f"{mode}{n}", preset="tiny", overrides=over,
                       progress=False)
            counts.append(sorted(calls))
    assert counts[0] == counts[1], (len(counts[0]), len(counts[1]), set(counts[1]) - set(counts[0]))


# ---- two-stage: which half feeds which step ---------------------------------------------------------------
def test_b_step_reads_the_validation_half_and_the_weight_step_the_training_half(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels mark the halves of the search's own split (0-4: the weights' half, 5-9: b's half); every
    step must first take a b step on a validation batch, then a weight step on a training batch."""
    ds = _ds(64)
    config = resolve_config(ISTAConfig, "tiny", overrides=MICRO)
    probe = replace(ds.train, y=torch.arange(len(ds.train)))  # the split depends only on n and the seed
    first, second = probe.split(config.train_fraction, seed=0)
    y = ds.train.y.clone()
    y[first.y] = y[first.y] % 5
    y[second.y] = 5 + y[second.y] % 5
    marked = replace(ds, train=replace(ds.train, y=y))
    seen: list[torch.Tensor] = []
    orig = F.cross_entropy

    def spy(logits, target, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if sys._getframe(1).f_code.co_filename == search_mod.__file__:
            seen.append(target.clone())
        return orig(logits, target, *a, **k)

    monkeypatch.setattr(F, "cross_entropy", spy)
    run_search("ista-nas", Task(marked), out=tmp_path / "run", preset="tiny", overrides=MICRO, progress=False)
    assert len(seen) == 2 * 2 * MICRO["epochs"]  # 2 steps per epoch, 2 losses per step
    b_batches, w_batches = seen[0::2], seen[1::2]
    assert all(bool((t >= 5).all()) for t in b_batches), "the b step must read the validation half"
    assert all(bool((t < 5).all()) for t in w_batches), "the weight step must read the training half"


def _step_setup(seed: int = 0):
    torch.manual_seed(seed)
    net = search_supernet(4, 10, 2, 4, 3)
    code = CompressedCode(seed=seed)
    z, _ = code.recover(1e-5)
    code.set_code(z)
    b_opt = torch.optim.Adam([code.b], lr=6e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    w_opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    return net, code, b_opt, w_opt


def test_two_stage_step_b_depends_only_on_the_validation_batch() -> None:
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]
    t1, t2, v = batches

    def run(train, valid):  # noqa: ANN001, ANN202
        net, code, b_opt, w_opt = _step_setup()
        ISTASearch._two_stage_step(net, code, code.support.tolist(), b_opt, w_opt, train, valid, 5.0)
        return code.b.detach().clone(), [p.detach().clone() for p in net.parameters()]

    b1, w1 = run(t1, v)
    b2, w2 = run(t2, v)  # another training batch: the same b, other weights
    b3, _ = run(t1, t2)  # another validation batch: another b
    torch.testing.assert_close(b1, b2, rtol=0, atol=0)
    assert any(not torch.equal(p, q) for p, q in zip(w1, w2, strict=True))
    assert not torch.equal(b1, b3)


# ---- one-stage: freezing and the size guard ---------------------------------------------------------------
NET_CFG = {"C": 4, "layers": 2, "auxiliary": False, "num_classes": 10, "input": [3, 32, 32]}


def _freeze_setup(**one_stage):
    over = [f"one_stage.{k}={v}" for k, v in {"max_params": 1e9, "freeze_tol": 1e-3, **one_stage}.items()]
    config = resolve_config(ISTAConfig, "tiny", overrides=over)
    code = CompressedCode(seed=0)
    z, _ = code.recover(1e-5)
    code.set_code(z)
    net = one_stage_supernet(4, 10, 3, 4, 3, auxiliary=False)  # 3 cells: a normal one and two reductions
    return config, code, net


def _off_support(code: CompressedCode, t: int, i: int) -> int:
    """A real candidate of node (t, i) where z is 0: moving it a little leaves the top-2 unchanged."""
    zero = (code.z[t, i] == 0) & code.mask[i]
    return int(zero.nonzero()[0])


def _bns_trainable(net: nn.Module, code: CompressedCode, t: int, i: int) -> bool:
    cells = [c for c in net.cells if int(c.reduction) == t]
    flags = set()
    for cell in cells:
        for c in code.support[t, i].tolist():
            for bn in op_bns(cell.edges[edge_index(i, c // 7)][c % 7]):
                flags |= {bn.weight.requires_grad, bn.bias.requires_grad}
    assert len(flags) == 1, "all BNs of a node's ops must be frozen or trainable together"
    return flags.pop()


def test_freeze_criterion_is_the_distance_z_moved() -> None:
    config, code, net = _freeze_setup()
    frozen = torch.zeros(2, 4, dtype=torch.bool)
    frozen[1, 3] = True
    old = code.z.clone()
    new = old.clone()
    moves = {(0, 0): 0.5e-3, (0, 1): 2e-3, (0, 2): 0.9e-3, (0, 3): 0.0, (1, 0): 1.1e-3, (1, 1): 5e-3,
             (1, 2): 1e-4, (1, 3): 1.0}
    for (t, i), d in moves.items():
        new[t, i, _off_support(code, t, i)] += d
    log: dict = {}
    ISTASearch()._freeze_update(code, new, frozen, net, config, NET_CFG, log)
    expected = torch.tensor([[True, False, True, True], [False, False, True, True]])
    assert torch.equal(frozen, expected), frozen
    assert "search/rejected" not in log and log["search/candidate_params"] > 0
    torch.testing.assert_close(code.z[1, 3], old[1, 3], rtol=0, atol=0)  # frozen before: keeps its z
    torch.testing.assert_close(code.z[0, 1], new[0, 1], rtol=0, atol=0)  # not frozen: adopts the new z
    for t in range(2):
        for i in range(4):
            newly = bool(expected[t, i]) and (t, i) != (1, 3)
            assert _bns_trainable(net, code, t, i) == newly, (t, i)


@pytest.mark.parametrize("margin, rejected", [(-1, True), (0, True), (1, False)])
def test_size_guard_rejects_a_selection_at_or_over_max_params(margin: int, rejected: bool) -> None:
    """The official guard rejects a network of 3.7M params *or more*; a rejected selection is not
    adopted and freezes nothing (the official code still updated its freeze flags: a bug)."""
    config, code, net = _freeze_setup()
    new = code.z.clone()
    params = search_mod._count_params(genotype_from_support(code.support.tolist()), NET_CFG)
    config = resolve_config(ISTAConfig, base=config, preset=None,
                            overrides=[f"one_stage.max_params={params + margin}"])
    old = code.z.clone()
    new[0, 0, _off_support(code, 0, 0)] += 0.01  # moved: adopted if accepted, not frozen
    frozen = torch.zeros(2, 4, dtype=torch.bool)
    log: dict = {}
    ISTASearch()._freeze_update(code, new, frozen, net, config, NET_CFG, log)
    assert log["search/candidate_params"] == params
    if rejected:
        assert log.get("search/rejected") == 1
        assert not bool(frozen.any())
        torch.testing.assert_close(code.z, old, rtol=0, atol=0)
    else:
        assert "search/rejected" not in log
        assert bool(frozen.sum() == 7)  # every node but (0, 0) did not move
        torch.testing.assert_close(code.z, new, rtol=0, atol=0)


# ---- one-stage: BNs, drop path, schedule, optimizer, absorption ------------------------------------------
def test_every_bn_inside_an_op_is_frozen_until_its_node_freezes() -> None:
    net = one_stage_supernet(4, 10, 3, 4, 3, auxiliary=False)
    sep = net.cells[0].edges[0][3]  # sep_conv_3x3: two BNs
    assert len(op_bns(sep)) == 2
    for cell in net.cells:
        for edge in cell.edges:
            for op in edge:
                for bn in op_bns(op):
                    assert not bn.weight.requires_grad and not bn.bias.requires_grad
                    assert bool((bn.weight == 1).all()) and bool((bn.bias == 0).all())
    assert all(p.requires_grad for p in net.cells[0].preprocess1.parameters())  # cell-level BNs train
    set_op_bn_trainable(net, 0, 0, [(0, 3)])
    assert all(bn.weight.requires_grad and bn.bias.requires_grad for bn in op_bns(sep))
    assert not op_bns(net.cells[1].edges[0][3])[0].weight.requires_grad  # a reduction cell: untouched


def test_search_epochs_leave_every_unfrozen_op_bn_at_one_and_zero(tmp_path: Path) -> None:
    over = {**ONE, "one_stage.freeze_tol": 0.0, "one_stage.max_search_epochs": 5}
    with pytest.raises(RunInterrupted):
        run_search("ista-nas", Task(_ds()), out=tmp_path / "one", preset="tiny", overrides=over, progress=False,
                   interrupt_after=1)
    state = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=False)
    assert not bool(state["extra"]["frozen"].any())
    net = one_stage_supernet(4, 10, 2, 4, 3, auxiliary=True)
    net.load_state_dict(state["model"]["net"])
    code = CompressedCode(seed=0)  # the search's initial code: the support epoch 1 ran
    z, _ = code.recover(1e-5)
    code.set_code(z)
    for cell in net.cells:
        for edge in cell.edges:
            for op in edge:
                for bn in op_bns(op):
                    assert bool((bn.weight == 1).all()) and bool((bn.bias == 0).all())
    ran = 0
    for cell in net.cells:
        t = int(cell.reduction)
        for i in range(4):
            for c in code.support[t, i].tolist():
                bns = op_bns(cell.edges[edge_index(i, c // 7)][c % 7])
                ran += len(bns) > 1
                assert all(bool((bn.running_var != 1).any()) for bn in bns)  # they did run
    assert ran > 0, "no selected op with an inner BN: pick another seed"


def test_drop_path_applies_to_skip_with_bn(monkeypatch: pytest.MonkeyPatch) -> None:
    import nas_common.spaces.darts as darts_mod
    import nas_common.spaces.darts_supernet as sup_mod

    calls = {"n": 0}

    def counting(x, p):  # noqa: ANN001, ANN202
        calls["n"] += 1
        return x

    monkeypatch.setattr(sup_mod, "drop_path", counting)
    monkeypatch.setattr(darts_mod, "drop_path", counting)
    net = one_stage_supernet(4, 10, 3, 4, 3, auxiliary=False).train()
    skip = [[(0, 2, None), (1, 2, None)] for _ in range(4)]  # every node: skip_connect from c_{k-2}, c_{k-1}
    net.drop_path_prob = 0.2
    net.forward_sparse(torch.randn(2, 3, 16, 16), skip, skip)
    assert calls["n"] == 3 * 4 * 2  # every op of every cell, the stride-1 skips (skip+BN) included
    calls["n"] = 0
    spec = genotype_from_support([[[2, 9]] * 4, [[2, 9]] * 4])  # skip from input 0 and input 1
    model = DARTS_BN_SPACE.build(spec, {**NET_CFG, "layers": 3}).train()
    model.drop_path_prob = 0.2
    model(torch.randn(2, 3, 16, 16))
    assert calls["n"] == 3 * 4 * 2


def test_one_stage_schedule_optimizer_and_absorption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """freeze_tol huge: every node freezes at the first recovery (after epoch 1); the official code runs
    one more search epoch with every node frozen, then trains (`epochs` 2) with the same SGD, the lr
    constant until then and cosine to lr_min after; the absorbed model computes the final supernet."""
    made = {"n": 0}
    real_sgd = torch.optim.SGD

    class CountingSGD(real_sgd):
        def __init__(self, *a, **k) -> None:  # noqa: ANN002, ANN003
            made["n"] += 1
            super().__init__(*a, **k)

    monkeypatch.setattr(torch.optim, "SGD", CountingSGD)
    over = {**ONE, "one_stage.freeze_tol": 1e9, "one_stage.epochs": 2, "one_stage.lr": 0.025,
            "one_stage.lr_min": 0.001}
    result, arch = run_search("ista-nas", Task(_ds()), out=tmp_path / "one", preset="tiny", overrides=over,
                              progress=False)
    assert made["n"] == 1, "the train phase must keep the search's optimizer (its momentum)"
    log = [r for r in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    recs = [json.loads(r) for r in log]
    assert [r["search/phase"] for r in recs] == ["search", "search", "train", "train"]
    assert [r["search/frozen"] for r in recs] == [8, 8, 8, 8]
    lrs = [r["train/lr"] for r in recs]
    assert lrs[:3] == pytest.approx([0.025, 0.025, 0.025])
    assert lrs[3] == pytest.approx(0.001 + (0.025 - 0.001) * 0.5)  # cosine over 2 epochs, eta_min = lr_min
    assert result.metrics["search_epochs"] == 2
    # the run's last checkpoint holds the trained supernet; absorbing it gives exactly result.model
    state = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=False)
    assert state["format"] == "nas-ckpt/2" and state["extra"]["phase"] == "train"
    net = one_stage_supernet(4, 10, 2, 4, 3, auxiliary=True)
    net.load_state_dict(state["model"]["net"])
    code = CompressedCode(seed=0)
    code.load_state_dict(state["model"]["code"])
    net.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = net.forward_sparse(x, *code.choices(code.weights()))
        got = result.model.eval()(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    w = code.weights().detach()
    assert float((w - 1).abs().max()) > 0.1  # the weights are not trivially 1: absorption mattered
    assert arch.space == "darts-bn"


def test_one_stage_resume_in_the_train_phase(tmp_path: Path) -> None:
    over = {**ONE, "one_stage.freeze_tol": 1e9, "one_stage.epochs": 2}
    result, arch = run_search("ista-nas", Task(_ds()), out=tmp_path / "a", preset="tiny", overrides=over,
                              progress=False)
    with pytest.raises(RunInterrupted):
        run_search("ista-nas", Task(_ds()), out=tmp_path / "b", preset="tiny", overrides=over, progress=False,
                   interrupt_after=3)
    result2, arch2 = run_search("ista-nas", Task(_ds()), out=tmp_path / "b", preset="tiny", overrides=over,
                                progress=False, resume=True)
    assert arch2 == arch
    for a, b in zip(result.model.state_dict().values(), result2.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_forced_freeze_after_max_search_epochs(tmp_path: Path) -> None:
    over = {**ONE, "one_stage.freeze_tol": 0.0, "one_stage.max_search_epochs": 2, "one_stage.epochs": 1}
    result, _ = run_search("ista-nas", Task(_ds()), out=tmp_path / "f", preset="tiny", overrides=over,
                           progress=False)
    recs = [json.loads(r) for r in (tmp_path / "f" / "metrics.jsonl").read_text().splitlines()]
    assert [r["search/phase"] for r in recs] == ["search", "search", "train"]
    assert recs[1].get("search/forced_freeze") == 1 and recs[1]["search/frozen"] == 8
    assert result.metrics["search_epochs"] == 2


def test_paper_preset_follows_the_official_one_stage_script() -> None:
    paper = resolve_config(ISTAConfig, "paper").one_stage
    assert (paper.lr, paper.lr_min, paper.epochs, paper.batch_size) == (0.025, 0.001, 600, 96)
    assert paper.max_search_epochs >= paper.epochs  # no cap below the official loop bound
    assert (paper.freeze_tol, paper.max_params, paper.drop_path, paper.cutout) == (1e-3, 3.7e6, 0.2, 16)
    assert resolve_config(ISTAConfig, "paper").lasso_method == "homotopy"


def test_an_unconverged_iterative_lasso_stops_the_search() -> None:
    from ista_nas.lasso import LassoError

    config = resolve_config(ISTAConfig, "paper", overrides=["lasso_method=fista", "lasso_max_iter=10"])
    code = CompressedCode(seed=0)
    with torch.no_grad():
        code.b.mul_(1000.0)
    before = code.support.clone()
    with pytest.raises(LassoError, match="unconverged"):
        ISTASearch._recover(code, config)
    assert torch.equal(code.support, before)



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_search_steps_do_not_sync_on_cuda() -> None:
    """The step functions under torch's sync debug mode (errors on any synchronising call)."""
    dev = torch.device("cuda")
    net, code, b_opt, w_opt = _step_setup()
    net.to(dev)
    code.to(dev)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(8, 3, 16, 16, generator=g).to(dev), torch.randint(0, 10, (8,), generator=g).to(dev))
    support = code.support.tolist()
    one = one_stage_supernet(4, 10, 3, 4, 3, auxiliary=True).to(dev)
    o_opt = torch.optim.SGD(one.parameters(), lr=0.025, momentum=0.9)
    frozen = torch.zeros(2, 4, dtype=torch.bool, device=dev)
    keep_b = code.b.detach().clone()
    oc = resolve_config(ISTAConfig, "paper").one_stage
    with torch.no_grad():
        w = code.weights()
    normal, reduce = code.choices(w, support)

    def steps() -> None:
        ISTASearch._two_stage_step(net, code, support, b_opt, w_opt, batch, batch, 5.0)
        ISTASearch._one_stage_search_step(one, code, support, frozen, keep_b, o_opt, b_opt, batch, oc)
        ISTASearch._one_stage_train_step(one, normal, reduce, o_opt, batch, oc)

    steps()  # optimizer state is created on the first step
    torch.cuda.synchronize(dev)
    torch.cuda.set_sync_debug_mode("error")
    try:
        steps()
    finally:
        torch.cuda.set_sync_debug_mode(0)
