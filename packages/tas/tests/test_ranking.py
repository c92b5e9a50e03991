"""The harness's ranking hook `TASSearch.sample_and_score`: sampling from the learned distributions,
scores tied to the searchable network at the hard choice, BN recalibration, archs as `derive` writes them."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from nas_common import NASError, SearchResult, Task, get_dataset, make_loader
from nas_common.search import run_search
from tas_nas import FlopTable, SearchResNet, TASSearch
from tas_nas.model import base_spec
from tas_nas.ranking import one_hot_sample, recalibrate_bn, score_configs

MICRO = {"base": "resnet20", "epochs": 2, "batch_size": 16, "max_steps_per_epoch": 2, "arch_lr": 0.02}


def _task(seed: int = 0) -> Task:
    return Task(get_dataset("cifar10-mini").subset(64, 16), seed=seed)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tas-hook") / "run"
    run_search("tas", _task(), out=out, preset="tiny", overrides=MICRO, progress=False)
    return out


def _network(run_dir: Path) -> SearchResNet:
    """The final searchable network, loaded here independently of the hook."""
    task = _task()
    model = SearchResNet(base_spec("resnet20"), task.num_classes, task.input_shape)
    model.load_state_dict(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"])
    return model.eval()


def _indices(model: SearchResNet, spec: dict) -> tuple[list[int], list[int]]:
    """The choice indices of a derived spec (blocks the spec does not have: the narrowest width, so that they
    cannot widen TAS's depth aggregation of the blocks it has)."""
    widx = [0] * len(model.choices)
    widx[0] = model.choices[0].index(spec["stem"])
    for _s, (vars_s, stage) in enumerate(zip(model.var_of, spec["widths"], strict=False)):
        for ids, widths in zip(vars_s, stage, strict=False):
            for v, c in zip(ids, widths, strict=False):
                widx[v] = model.choices[v].index(c)
    didx = [model.depth_choices[s].index(d) for s, d in enumerate(spec["depths"])]
    return widx, didx


def test_hook_returns_distinct_buildable_archs_deterministically(run_dir: Path) -> None:
    task = _task()
    pairs = TASSearch().sample_and_score(run_dir, task, 5, seed=0)
    assert len(pairs) == 5 and len({a.digest for a, _ in pairs}) == 5
    for arch, acc in pairs:
        assert 0.0 <= acc <= 1.0 and isinstance(acc, float)
        assert arch.space == "resnet" and arch.method == "tas"
        assert arch.build()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    again = TASSearch().sample_and_score(run_dir, task, 5, seed=0)
    assert [(a.digest, s) for a, s in again] == [(a.digest, s) for a, s in pairs]
    other = TASSearch().sample_and_score(run_dir, task, 5, seed=1)
    assert [a.digest for a, _ in other] != [a.digest for a, _ in pairs]
    # a network's score depends on the network only, not on the sampling seed
    by_arch = {a.digest: s for a, s in pairs}
    assert all(by_arch[a.digest] == s for a, s in other if a.digest in by_arch)


def test_each_arch_is_what_derive_writes_and_costs_the_one_hot_expected_macs(run_dir: Path) -> None:
    """derive() on logits one-hot at a sampled configuration writes the same Arch, whose counted MACs are the
    search's expected-MACs formula at those one-hot distributions."""
    model = _network(run_dir)
    table = FlopTable(model)
    for arch, _ in TASSearch().sample_and_score(run_dir, _task(), 4, seed=3):
        widx, didx = _indices(model, arch.spec)
        w1h = torch.nn.functional.one_hot(torch.tensor(widx), model.width_logits.shape[1]).float()
        d1h = torch.nn.functional.one_hot(torch.tensor(didx), model.depth_logits.shape[1]).float()
        assert float(table(w1h, d1h)) == pytest.approx(arch.costs["macs"], rel=1e-6)
        macs = arch.costs["macs"]
        state = {"width_logits": w1h, "depth_logits": d1h, "layout": model.layout(), "base": "resnet20",
                 "net": dict(arch.net), "target_macs": macs, "tolerance_macs": 1.0, "band_found": False,
                 "feasible_found": False}
        result = SearchResult("tas", state=state)
        derived = TASSearch().derive(result)
        assert result.metrics["derived_from"] == "final"
        assert derived == arch and derived.with_costs().costs == arch.costs


def test_score_is_the_searchable_network_at_that_one_hot_choice(run_dir: Path) -> None:
    """With the search's BN statistics kept, each score is the accuracy of the searchable network's forward at
    the arch's hard choice (built here as the chosen candidate with weight 1 and the narrowest with weight 0,
    which leaves the active width at the chosen one) on the architecture half."""
    task = _task()
    pairs = TASSearch().sample_and_score(run_dir, task, 6, seed=0, bn_batches=0)
    model = _network(run_dir)
    _, arch_half = task.dataset.train.split(0.5, seed=task.seed, per_class=True)
    x, y = next(iter(make_loader(arch_half, len(arch_half), train=False)))
    accs = set()
    for arch, score in pairs:
        widx, didx = _indices(model, arch.spec)
        other = [0] * len(widx)
        idx = torch.tensor([widx, other]).T
        p = torch.tensor([[1.0, 0.0]]).expand(len(widx), 2)
        dw = torch.nn.functional.one_hot(torch.tensor(didx), model.depth_logits.shape[1]).float()
        with torch.no_grad():
            acc = int((model(x, (idx, p, dw)).argmax(1) == y).sum()) / len(y)
        assert score == acc
        accs.add(acc)
    assert len(accs) > 1  # the networks predict differently, so a wrong arch-to-score pairing would show
    assert len(arch_half) == 33  # the per-class split of 64 images, not a plain half


def test_recalibrated_statistics_fit_the_configuration(run_dir: Path) -> None:
    """After recalibrating on one batch, eval mode reproduces the train-mode (batch-statistics) forward on it;
    the entries of candidates the configuration does not use are untouched, and momenta are restored."""
    model = _network(run_dir)
    gen = torch.Generator().manual_seed(0)
    widx = torch.multinomial(model.width_probs().detach(), 1, generator=gen).flatten()
    didx = torch.tensor([len(c) - 1 for c in model.depth_choices])  # every block in use
    sample = one_hot_sample(model, widx, didx)
    x = torch.randn(32, 3, 32, 32)
    stem = model.stem
    before_mean, before_var = stem.running_mean.clone(), stem.running_var.clone()
    with torch.no_grad():
        stale = model.eval()(x, sample)
        batch_stats = model.train()(x, sample)
    stem.running_mean.copy_(before_mean)
    stem.running_var.copy_(before_var)
    recalibrate_bn(model, sample, [(x, None)])
    assert not model.training and stem.momentum == 0.1
    with torch.no_grad():
        calibrated = model(x, sample)
    torch.testing.assert_close(calibrated, batch_stats, rtol=1e-3, atol=1e-3)
    assert (stale - batch_stats).abs().max() > 10 * (calibrated - batch_stats).abs().max()
    k = int(widx[0])
    unused = [j for j in range(len(model.choices[0])) if j != k]
    torch.testing.assert_close(stem.running_mean[unused], before_mean[unused])
    assert not torch.allclose(stem.running_mean[k], before_mean[k])


def test_recalibrated_scores_do_not_depend_on_the_other_configurations(run_dir: Path) -> None:
    model = _network(run_dir)
    gen = torch.Generator().manual_seed(5)
    configs = [(torch.multinomial(model.width_probs().detach(), 1, generator=gen).flatten(),
                torch.multinomial(model.depth_probs().detach(), 1, generator=gen).flatten()) for _ in range(3)]
    held = [(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))) for _ in range(2)]
    calib = [(torch.randn(16, 3, 32, 32), None) for _ in range(2)]
    forward = score_configs(model, configs, held, calib)
    backward = score_configs(model, configs[::-1], held, calib)
    assert forward == backward[::-1]


def test_a_peaked_distribution_gives_fewer_archs_instead_of_looping(run_dir: Path, tmp_path: Path) -> None:
    """Widths one-hot, only stage 0's depth uncertain between 1 and 2: exactly two networks exist."""
    peaked = tmp_path / "peaked"
    shutil.copytree(run_dir, peaked)
    ckpt = peaked / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=False)
    w, d = state["model"]["width_logits"], state["model"]["depth_logits"]
    w.fill_(-50.0)
    w[:, 0] = 50.0
    d.fill_(-50.0)
    d[:, 0] = 50.0
    d[0, :2] = 0.0
    torch.save(state, ckpt)
    pairs = TASSearch().sample_and_score(peaked, _task(), 6, seed=0, bn_batches=1)
    assert sorted(a.spec["depths"][0] for a, _ in pairs) == [1, 2]
    assert all(a.spec["depths"][1:] == [1, 1] for a, _ in pairs)


def test_wrong_run_dirs_give_one_line_errors(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NASError, match="finished `nas search tas` run") as e:
        TASSearch().sample_and_score(tmp_path / "nothing", _task(), 2, seed=0)
    assert "\n" not in str(e.value)
    with pytest.raises(NASError, match="seed=0"):
        TASSearch().sample_and_score(run_dir, _task(seed=1), 2, seed=0)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished)
    state = torch.load(unfinished / "checkpoints" / "last.pt", weights_only=False)
    torch.save({**state, "epoch": 1}, unfinished / "checkpoints" / "last.pt")
    with pytest.raises(NASError, match="stopped after epoch 1 of 2.*--resume") as e:
        TASSearch().sample_and_score(unfinished, _task(), 2, seed=0)
    assert "\n" not in str(e.value)
