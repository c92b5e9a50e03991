"""The harness's ranking hook `ISTASearch.sample_and_score`: uniform sampling, scores tied to the supernet."""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from ista_nas import ISTA_PRIMITIVES, CompressedCode, ISTAConfig, ISTASearch, uniform_supports
from ista_nas.network import search_supernet
from nas_common import Task, get_dataset, load_arch
from nas_common.config import resolve_config
from nas_common.data import make_loader
from nas_common.errors import NASError
from nas_common.search import run_search

torch.set_num_threads(1)

MICRO = {"layers": 2, "C": 4, "epochs": 2, "batch_size": 16, "eval_C": 4, "eval_layers": 2}


def _task(seed: int = 0) -> Task:
    return Task(get_dataset("cifar10-mini").subset(64, 16), seed=seed)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ista") / "run"
    run_search("ista-nas", _task(), out=out, preset="tiny", overrides=MICRO, progress=False)
    return out


def _support_of(spec: dict) -> list[list[list[int]]]:
    """The inverse of genotype_from_support: candidate index = input * 7 + op index."""
    n = len(ISTA_PRIMITIVES)
    return [[[j * n + ISTA_PRIMITIVES.index(op) for op, j in spec[cell][2 * i: 2 * i + 2]] for i in range(4)]
            for cell in ("normal", "reduce")]


def test_hook_returns_distinct_buildable_archs_deterministically(run_dir: Path) -> None:
    pairs = ISTASearch().sample_and_score(run_dir, _task(), 5, seed=0)
    derived = load_arch(run_dir / "arch.json")
    assert len(pairs) == 5 and len({a.digest for a, _ in pairs}) == 5
    for arch, acc in pairs:
        assert isinstance(acc, float) and 0.0 <= acc <= 1.0
        assert arch.space == "darts" and arch.net == derived.net  # the net derive writes
        for cell in _support_of(arch.spec):
            for i, node in enumerate(cell):
                assert len(set(node)) == 2 and all(0 <= c < 7 * (i + 2) for c in node)
    assert pairs[0][0].build()(torch.randn(2, 3, 32, 32))[0].shape == (2, 10)
    again = ISTASearch().sample_and_score(run_dir, _task(), 5, seed=0)
    assert [a for a, _ in again] == [a for a, _ in pairs] and [s for _, s in again] == [s for _, s in pairs]
    other = ISTASearch().sample_and_score(run_dir, _task(), 5, seed=1)
    assert {a.digest for a, _ in other} != {a.digest for a, _ in pairs}


@pytest.mark.parametrize("op_weights", ["code", "half"])
def test_score_is_the_recalibrated_subnetwork_accuracy(run_dir: Path, op_weights: str) -> None:
    """Recompute the scores independently: dense supernet forward with the sub-network's weights (0
    elsewhere), BN statistics re-estimated on the documented calibration batches."""
    task = _task()
    pairs = ISTASearch().sample_and_score(run_dir, task, 3, seed=4, op_weights=op_weights, bn_batches=2)
    config = resolve_config(ISTAConfig, "tiny", overrides=MICRO)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    code = CompressedCode(config.steps, config.m, 2, seed=task.seed)
    code.load_state_dict(state["model"]["code"])
    net = search_supernet(config.C, 10, config.layers, config.steps, 3).to(memory_format=torch.channels_last)
    net.load_state_dict(state["model"]["net"])
    train, valid = task.dataset.train.split(config.train_fraction, seed=task.seed)
    loader = make_loader(train, config.batch_size, train=True, seed=task.seed, drop_last=False, channels_last=True)
    calib = list(itertools.islice(loader, 2))
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for arch, score in pairs:
        support = _support_of(arch.spec)
        dense = []
        for t in range(2):
            w = torch.zeros(net.n_edges, net.n_ops)
            for i in range(4):
                S = torch.tensor(support[t][i])
                if op_weights == "half":
                    ws = torch.full((2,), 0.5)
                else:  # w_S = z_S + A_S^T (b - A_S z_S), written out for this node
                    A_S, z_S = code.A[t, i][:, S], code.z[t, i][S]
                    ws = (z_S + A_S.T @ (code.b[t, i] - A_S @ z_S)).detach()
                for c, wc in zip(support[t][i], ws, strict=False):
                    w[i * (i + 3) // 2 + c // 7, c % 7] = wc
            dense.append(w)
        with torch.no_grad():
            for m in bns:
                m.reset_running_stats()
                m.momentum = None
            net.train()
            for x, _ in calib:
                net(x, *dense)
            net.eval()
            hits = sum(int((net(x, *dense).argmax(1) == y).sum()) for x, y in
                       make_loader(valid, 7, train=False, channels_last=True))
        assert score == pytest.approx(hits / len(valid), abs=1e-6)


def test_code_weights_of_the_learned_support_are_the_searched_weights() -> None:
    code = CompressedCode(seed=0)
    z, _ = code.recover(1e-5)
    code.set_code(z)
    got = ISTASearch.score_weights(code, code.support.unsqueeze(0).expand(3, -1, -1, -1), "code")
    torch.testing.assert_close(got, code.weights().detach().expand(3, -1, -1, -1))
    assert bool((ISTASearch.score_weights(code, code.support.unsqueeze(0), "half") == 0.5).all())


def test_uniform_supports_distinct_valid_and_bounded() -> None:
    mask = torch.tensor([[True, True, True, False]])  # 1 node, 3 candidates: 3 x 3 supports in all
    sup = uniform_supports(mask, 20, torch.Generator().manual_seed(0), max_rounds=10)
    assert sup.shape == (9, 2, 1, 2)  # all there are, not 20, and no endless loop
    assert len({tuple(s.flatten().tolist()) for s in sup}) == 9
    assert bool((sup[..., 0] < sup[..., 1]).all()) and int(sup.max()) <= 2
    full = uniform_supports(CompressedCode().mask, 400, torch.Generator().manual_seed(1))
    counts = torch.bincount(full[:, :, 0].flatten(), minlength=14).float()  # node 0: 14 candidates
    assert float(counts.min()) > 0.5 * float(counts.mean())  # every candidate drawn about equally


def test_hook_errors_are_one_line(run_dir: Path, tmp_path: Path) -> None:
    def check(where: Path, match: str, task: Task | None = None) -> None:
        with pytest.raises(NASError, match=match) as err:
            ISTASearch().sample_and_score(where, task or _task(), 2, seed=0)
        assert "\n" not in str(err.value)

    check(tmp_path / "nothing", "does not exist")
    check(run_dir, "seed", _task(seed=3))
    cut = tmp_path / "cut"
    shutil.copytree(run_dir, cut)
    state = torch.load(cut / "checkpoints" / "last.pt", weights_only=False)
    torch.save({**state, "epoch": 1}, cut / "checkpoints" / "last.pt")
    check(cut, "epoch 1 of 2")
    (cut / "checkpoints" / "last.pt").unlink()
    check(cut, "last.pt")
    one = tmp_path / "one"
    one.mkdir()
    (one / "config.toml").write_text((run_dir / "config.toml").read_text().replace('mode = "two-stage"',
                                                                                    'mode = "one-stage"'))
    check(one, "one-stage")
