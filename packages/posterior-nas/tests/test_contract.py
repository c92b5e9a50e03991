"""posterior-nas on nas_common's method contract: every refusal before the run directory exists (through
the `nas` command too), the one checkpoint schema with the held-out split's fingerprint, rank-0 mask
decisions and scoring shared over ranks, the metric names, and logging instead of printing."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nas_common import Budget, Task, get_dataset
from nas_common.config import resolve_config
from nas_common.context import SearchContext
from nas_common.data.datasets import from_arrays
from nas_common.errors import BudgetError, ConfigError, DataError
from nas_common.runs import RunInterrupted
from nas_common.search import run_search
from posterior_nas import PosteriorConfig, PosteriorSearch, get_supnet_space, split_held_out
from posterior_nas import search as search_mod
from posterior_nas.sampling import sample_masks, score_masks

MICRO = {"space": "supnet-m", "width": 4, "blocks": [1, 1, 1], "stem": 4, "epochs": 2, "batch_size": 16,
         "val_fraction": 0.25, "num_samples": 8, "score_batch": 64, "uniform_baseline": False, "cutout": 0}


def _task(seed: int = 0, n_train: int = 64, budget: Budget | None = None) -> Task:
    return Task(get_dataset("cifar10-mini").subset(n_train, 32), seed=seed, budget=budget or Budget())


def _search(out: Path, task: Task, **overrides: object):  # noqa: ANN202
    return run_search("posterior-nas", task, out=out, preset="tiny", overrides={**MICRO, **overrides}, progress=False)


# ---- every refusal before anything is written, through the `nas` command ----------------------------------

@pytest.mark.parametrize("args, match", [
    (["--budget-macs", "1e3"], "fits the budget: even with every searched channel dropped"),
    (["--budget-params", "10"], "fits the budget"),
    (["-o", "epochs=0"], "epochs=0 must be positive: an untrained supernet"),
    (["-o", "val_fraction=0.9999"], "leaves the training part empty"),
    (["-o", "space=supnet-r", "-o", "stem=4"], "stem applies to supnet-m/supnet-mi"),
    (["-o", "space=supnet-r", "-o", "stem=none", "-o", "stem_stride=1", "-o", "width=6"], "multiple of 4"),
    (["--budget", "latency=1"], "cannot honour a latency"),
])
def test_refusals_come_before_the_run_directory_through_the_cli(args: list[str], match: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """One line on stderr, exit 2, no traceback and no --out: a corrected command then finds no half-written
    run in its way."""
    from nas_common.cli import main

    out = tmp_path / "run"
    code = main(["search", "posterior-nas", "--preset", "tiny", "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and re.search(match, err), err
    assert not out.exists()


def _imagenet_like(n: int = 4) -> Task:
    """72x72 images: the `auto` recipe takes them for ImageNet (SupNet-R-50, its schedule)."""
    x = np.zeros((n, 72, 72, 3), np.uint8)
    y = np.arange(n) % 2
    return Task(from_arrays("big", x, y, x[:2], y[:2], mean=(0.5,) * 3, std=(0.25,) * 3))


def test_check_resolves_the_data_dependent_recipe() -> None:
    """The refusals judge the config the search would run: on ImageNet-sized data the paper preset's supernet
    is SupNet-R-50, which has no stem option and whose smallest network is far above a CIFAR-sized budget."""
    paper = resolve_config(PosteriorConfig, "paper")
    with pytest.raises(ConfigError, match="stem applies to supnet-m/supnet-mi, not supnet-r"):
        PosteriorSearch().check(_imagenet_like(), paper.replace(stem=16))
    big = Task(_imagenet_like().dataset, budget=Budget(macs=10e6))
    with pytest.raises(BudgetError, match="no network of supnet-r"):
        PosteriorSearch().check(big, paper)
    PosteriorSearch().check(_task(budget=Budget(macs=50e6)), resolve_config(PosteriorConfig, "tiny"))


def test_infeasible_budget_leaves_no_run_behind_and_the_corrected_command_runs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(BudgetError):
        _search(out, _task(budget=Budget(macs=1e3)), epochs=1)
    assert not out.exists()
    _, arch = _search(out, _task(budget=Budget(macs=1.4e6)), epochs=1)
    assert arch.costs["macs"] <= 1.4e6


def test_a_held_out_part_too_small_for_the_data_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="training part empty"):
        _search(tmp_path / "run", _task(n_train=3), val_fraction=0.8)
    assert not (tmp_path / "run").exists()


# ---- the checkpoint schema and the held-out fingerprint ----------------------------------------------------

def test_checkpoint_holds_the_supernet_by_name_and_the_split_fingerprint(tmp_path: Path) -> None:
    task = _task()
    result, _ = _search(tmp_path / "run", task)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["format"] == "nas-ckpt/2" and ckpt["epoch"] == MICRO["epochs"]
    assert (set(ckpt["model"]), set(ckpt["optimizers"]), set(ckpt["schedulers"])) == ({"supernet"}, {"sgd"}, {"lr"})
    config = resolve_config(PosteriorConfig, "tiny", overrides=MICRO).resolve(task)
    held = split_held_out(task, config)[1]
    assert ckpt["extra"]["held_out"] == held.fingerprint() == result.state["held_out"]
    # the search state is the architecture's (drop rates, decisions), not the supernet's weights
    assert "supernet" not in result.state and {"drop_rates", "best_mask", "spec"} <= set(result.state)


def test_resume_with_other_data_under_the_same_name_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        run_search("posterior-nas", _task(), out=out, preset="tiny", overrides=MICRO, progress=False,
                   interrupt_after=1)
    with pytest.raises(ConfigError, match="cannot resume: the task's held-out split"):
        run_search("posterior-nas", _task(n_train=60), out=out, preset="tiny", overrides=MICRO, progress=False,
                   resume=True)


# ---- decisions on rank 0, scoring shared by the ranks ---------------------------------------------------

def test_the_scored_masks_are_the_ones_rank_0_decided(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The masks come from `ctx.decide` (drawn on rank 0, given to every rank), not from a draw of each rank
    of its own: whatever the decision returns is what gets scored and chosen from."""
    space = get_supnet_space("supnet-m")
    net = space.validate_net({"width": 4, "blocks": [1, 1, 1], "stem": 4, "num_classes": 10, "input": [3, 32, 32]})
    plan = space.plan(net)
    full = torch.ones(2, plan.num_channels, dtype=torch.bool)
    full[1, : plan.sizes[0]] = False  # two masks: the full supernet and one with a vanished path
    decided: list[str] = []
    real = SearchContext.decide

    def decide(self: SearchContext, fn, *args, **kwargs):  # noqa: ANN001, ANN202
        decided.append(fn.__name__)
        if fn.__name__ == "draw":
            return full.clone(), 12345
        return real(self, fn, *args, **kwargs)

    monkeypatch.setattr(SearchContext, "decide", decide)
    result, _ = _search(tmp_path / "run", _task(), uniform_baseline=True)
    assert decided.count("draw") == 2  # the posterior's masks and the uniform baseline's
    assert result.metrics["drawn"] == 12345 and result.metrics["samples"] == 2
    assert any(torch.equal(result.state["best_mask"], m) for m in full)


class _Rank:
    """What `score_on_ranks` reads of a search context, for one rank of two."""

    def __init__(self, rank: int) -> None:
        self.rank, self.world_size, self.distributed = rank, 2, True


def test_each_rank_scores_its_share_and_gets_every_score(monkeypatch: pytest.MonkeyPatch) -> None:
    space = get_supnet_space("supnet-m")
    net_cfg = space.validate_net({"width": 4, "blocks": [1, 1, 1], "stem": 4, "num_classes": 10,
                                  "input": [3, 16, 16]})
    torch.manual_seed(0)
    net = space.supernet(net_cfg).eval()
    masks = sample_masks(torch.full((net.plan.num_channels,), 0.3), 7, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    held = [(torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 10, (6,), generator=g)) for _ in range(2)]
    expected = score_masks(net, masks, held, fold=12)
    shares = [score_masks(net, part, held, fold=12) for part in torch.tensor_split(masks, 2)]
    for rank in (0, 1):
        # the other rank's share comes from the gather; this rank's is the one it scored itself
        monkeypatch.setattr(search_mod.dist, "gather_objects",
                            lambda mine, r=rank: [mine if i == r else shares[i] for i in range(2)])
        acc, loss = search_mod.score_on_ranks(_Rank(rank), net, masks, held, fold=12)
        torch.testing.assert_close(acc, expected[0])
        torch.testing.assert_close(loss, expected[1])


# ---- output: metric names, logging ------------------------------------------------------------------------

def test_logged_metrics_follow_the_naming_scheme_and_nothing_is_printed(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="posterior_nas"):
        _search(tmp_path / "run", _task(), finetune_epochs=1, uniform_baseline=True)
    assert capsys.readouterr().out == ""
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = {k for r in records for k in r if k != "step"}
    assert {"train/loss", "train/top1", "search/p_mean", "search/best_acc", "search/finetune_loss"} <= keys
    bad = sorted(k for k in keys if not re.fullmatch(r"(train|valid|search)/[a-z0-9_]+", k))
    assert not bad, bad
    assert any(r.name == "posterior_nas.search" and "posterior-guided sampling" in r.getMessage()
               for r in caplog.records)
