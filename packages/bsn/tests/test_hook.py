"""BSN's ranking hook `sample_and_score`: distinct archs from the learned gates, scored with the shared weights."""
from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from bsn_nas import BSNSearch, resnet_graph
from bsn_nas.search import sample_distinct
from nas_common import Task, get_dataset
from nas_common.config import to_toml
from nas_common.data import make_loader
from nas_common.errors import ConfigError, NASError, RunError
from nas_common.methods import SearchResult
from nas_common.search import run_search

MICRO_NET = {"depth": 8, "widths": [4, 8, 8], "num_classes": 10, "input": [3, 32, 32]}
N_TRAIN, VAL = 160, 32
# 4 short epochs: enough for the sub-networks' held-out accuracies to differ. eval_batch_size 64 over 32
# held-out images: two networks share each scoring forward (the folded path).
MICRO = {"supernet": "resnet", "depth": 8, "widths": [4, 8, 8], "epochs": 4, "batch_size": 16, "val_size": VAL,
         "lr": 0.1, "lr_milestones": [100], "gate_lr": 0.5, "eval_batch_size": 64, "unbudgeted_cost": "none"}


def _task() -> Task:
    return Task(dataset=get_dataset("cifar10-mini").subset(N_TRAIN, 16), device=torch.device("cpu"), seed=0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bsn-hook") / "run"
    run_search("bsn", _task(), out=out, preset="tiny", overrides=MICRO, progress=False)
    return out


def _edited_run(run_dir: Path, dest: Path, epoch: int | None = None, config: dict | None = None,
                **extra: object) -> Path:
    """A copy of run_dir whose final checkpoint ("nas-ckpt/2") has another `epoch` or `extra` values
    (logits, held_out), or whose config.toml has the config values `config`."""
    shutil.copytree(run_dir, dest)
    ckpt = dest / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=False)
    if epoch is not None:
        state["epoch"] = epoch
    state["extra"].update(extra)
    torch.save(state, ckpt)
    if config:
        record = tomllib.loads((dest / "config.toml").read_text())
        record["config"].update(config)
        (dest / "config.toml").write_text(to_toml(record))
    return dest


def test_hook_returns_distinct_buildable_archs_deterministically(run_dir: Path) -> None:
    pairs = BSNSearch().sample_and_score(run_dir, _task(), 5, seed=0)
    assert len(pairs) == 5
    archs = [a for a, _ in pairs]
    assert len({a.canonical() for a in archs}) == 5
    for arch, acc in pairs:
        assert arch.space == "bsn-resnet" and arch.net == MICRO_NET and arch.method == "bsn"
        assert 0.0 <= acc <= 1.0
        assert arch.build()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    again = BSNSearch().sample_and_score(run_dir, _task(), 5, seed=0)
    assert [(a.to_dict(), s) for a, s in again] == [(a.to_dict(), s) for a, s in pairs]
    other = BSNSearch().sample_and_score(run_dir, _task(), 5, seed=1)
    assert [a.canonical() for a, _ in other] != [a.canonical() for a in archs]


def test_score_is_the_pruned_networks_accuracy_and_arch_is_derives(run_dir: Path) -> None:
    """Each score equals the held-out accuracy of that Arch, physically pruned, with the supernet's weights;
    each Arch is what `derive` writes when exactly its gates are on."""
    pairs = BSNSearch().sample_and_score(run_dir, _task(), 6, seed=3)
    sup = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]["net"]
    train = _task().dataset.train
    held = train.subset(torch.arange(N_TRAIN - VAL, N_TRAIN))  # BSN validates on the last val_size images
    (x, y), = list(make_loader(held, VAL, train=False))
    g = resnet_graph(MICRO_NET)
    for arch, score in pairs:
        model = arch.build()
        wanted = model.state_dict()
        assert set(wanted) <= set(sup)  # a sub-network of the supernet: its names, a subset of its weights
        model.load_state_dict({k: v for k, v in sup.items() if k in wanted}, strict=True)
        with torch.no_grad():
            acc = (model.eval()(x).argmax(1) == y).float().mean().item()
        assert score == pytest.approx(acc, abs=1e-9), arch.spec
        probs = torch.tensor([float(nm in arch.spec["keep"]) for nm in g.gate_names])
        derived = BSNSearch().derive(SearchResult("bsn", state={"probs": probs, "logits": torch.logit(probs),
                                                                "space": "bsn-resnet", "net": MICRO_NET,
                                                                "threshold": 0.5, "distributed_k": 2}))
        assert derived.to_dict() == arch.to_dict()
    assert len({s for _, s in pairs}) > 1, "the micro supernet should tell some sub-networks apart"


def test_sampling_follows_the_learned_gates(run_dir: Path, tmp_path: Path) -> None:
    g = resnet_graph(MICRO_NET)
    names = g.gate_names
    logits = torch.zeros(len(names))  # every gate p = 1/2 ...
    logits[names.index("s1b0_block")] = -40.0  # ... except one never on
    logits[names.index("s2b0_skip")] = 40.0    # and one always on
    forced = _edited_run(run_dir, tmp_path / "forced", logits=logits)
    pairs = BSNSearch().sample_and_score(forced, _task(), 6, seed=0)
    assert len(pairs) == 6
    assert all("s1b0_block" not in a.spec["keep"] and "s2b0_skip" in a.spec["keep"] for a, _ in pairs)

    # a (nearly) deterministic distribution has one network: the bounded draws return it alone
    sure = _edited_run(run_dir, tmp_path / "sure", logits=torch.full((len(names),), 40.0))
    pairs = BSNSearch().sample_and_score(sure, _task(), 4, seed=0)
    assert [a.spec["keep"] for a, _ in pairs] == [names]


def test_sample_distinct_dedupes_sub_networks_and_bounds_draws() -> None:
    g = resnet_graph(MICRO_NET)
    pats = sample_distinct(g, torch.full((g.num_gates,), 0.5), 100, torch.Generator().manual_seed(0))
    assert len(pats) == 27  # 3 stages x (block, skip, both): every connected sub-network, each once
    assert len({tuple(r.tolist()) for r in pats}) == 27
    assert all(g.connected([nm for nm, on in zip(g.gate_names, r.tolist(), strict=False) if on]) for r in pats)
    # the first draws of a larger request start with those of a smaller one (one stream per seed)
    few = sample_distinct(g, torch.full((g.num_gates,), 0.5), 5, torch.Generator().manual_seed(0))
    assert torch.equal(few, pats[:5])
    # gates that never connect: nothing to return, after max_draws patterns
    off = sample_distinct(g, torch.zeros(g.num_gates), 3, torch.Generator().manual_seed(0), max_draws=50)
    assert off.shape == (0, g.num_gates)


def test_hook_errors_are_one_line(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NASError, match="does not exist") as e:
        BSNSearch().sample_and_score(tmp_path / "nothing", _task(), 3, seed=0)
    assert "\n" not in str(e.value)
    unfinished = _edited_run(run_dir, tmp_path / "unfinished", epoch=1)
    with pytest.raises(RunError, match="stopped after epoch 1 of 4.*--resume"):
        BSNSearch().sample_and_score(unfinished, _task(), 3, seed=0)
    no_val = _edited_run(run_dir, tmp_path / "noval", config={"val_size": 0})
    with pytest.raises(ConfigError, match="val_size=0"):
        BSNSearch().sample_and_score(no_val, _task(), 3, seed=0)
    # the held-out images are checked against the fingerprint the search recorded
    other = _edited_run(run_dir, tmp_path / "other", held_out={"images": VAL, "digest": "0" * 16})
    with pytest.raises(RunError, match="held-out images .* differ") as e:
        BSNSearch().sample_and_score(other, _task(), 3, seed=0)
    assert "\n" not in str(e.value)
    more = Task(dataset=get_dataset("cifar10-mini").subset(N_TRAIN + 32, 16), seed=0)  # other images held out
    with pytest.raises(RunError, match="held-out images"):
        BSNSearch().sample_and_score(run_dir, more, 3, seed=0)
    grey = tmp_path / "grey.npz"  # another dataset: refused before the supernet is even built
    rng = np.random.default_rng(0)
    np.savez(grey, x_train=rng.integers(0, 256, (N_TRAIN, 32, 32, 1), dtype=np.uint8),
             y_train=rng.integers(0, 10, N_TRAIN), x_test=rng.integers(0, 256, (8, 32, 32, 1), dtype=np.uint8),
             y_test=rng.integers(0, 10, 8))
    with pytest.raises(NASError, match="searched on 'cifar10-mini'.*pass a Task on the search's dataset") as e:
        BSNSearch().sample_and_score(run_dir, Task(dataset=get_dataset(f"npz:{grey}"), seed=0), 3, seed=0)
    assert "\n" not in str(e.value)
