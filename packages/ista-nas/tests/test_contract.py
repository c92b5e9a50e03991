"""ISTA-NAS on the nas-common contract: refusals before writing (also through the `nas` command), the
held-out fingerprint, the `darts-bn` space's hooks and closed-form costs, no host sync in a one-stage
step, and the data-parallel search (2 processes) in both modes."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import ista_nas.search as search_mod
from ista_nas import ISTAConfig, ISTASearch, genotype_from_support, uniform_supports
from ista_nas.closed_form import darts_costs
from ista_nas.network import DARTS_BN_SPACE
from nas_common import Budget, Task, get_dataset
from nas_common.cli import main as nas_main
from nas_common.config import resolve_config
from nas_common.context import SearchContext
from nas_common.costs import count_macs, count_params
from nas_common.errors import BudgetError, ConfigError
from nas_common.search import run_search
from nas_common.spaces import get_space
from nas_common.spaces.darts import DARTS_SPACE, DARTS_V2, genotype_to_spec
from nas_common.testing import detect_host_syncs

torch.set_num_threads(1)

MICRO = {"layers": 2, "C": 4, "epochs": 2, "batch_size": 16, "eval_C": 4, "eval_layers": 2}
ONE = {**MICRO, "mode": "one-stage", "one_stage.batch_size": 16}


def _task(n: int = 64, seed: int = 0, budget: Budget | None = None) -> Task:
    return Task(get_dataset("cifar10-mini").subset(n, 16), seed=seed, budget=budget or Budget())


# ---- refusals before anything is written -----------------------------------------------------------------
REFUSALS = {
    "a budget": (["--budget-macs", "1e6"], "cannot honour a macs budget: it takes no budget"),
    "a named-cost budget": (["--budget", "macs-ptflops=1e6"], "cannot honour a macs-ptflops budget"),
    "a batch larger than the training half": (["-o", "batch_size=4096"],
                                              "training part of cifar10-mini holds 2330 images, fewer than one batch"),
    "a one-stage batch larger than the data": (["--mode", "one-stage", "-o", "one_stage.batch_size=5000"],
                                               "holds 4660 images, fewer than one batch of 5000"),
    "a size guard below every architecture": (["--mode", "one-stage", "-o", "one_stage.max_params=5e4"],
                                              "one_stage.max_params=50000 rejects every architecture"),
    "an unknown mode": (["--mode", "three-stage"], "mode"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_through_the_cli_are_one_line_exit_2_and_write_nothing(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args, match = REFUSALS[case]
    out = tmp_path / "run"
    code = nas_main(["search", "ista-nas", "--preset", "tiny", "--out", str(out), "--json", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    assert not out.exists(), "a refusal must come before the run directory is created"


def test_a_budget_names_the_methods_that_take_one(tmp_path: Path) -> None:
    with pytest.raises(BudgetError, match="ista-nas cannot honour a params budget"):
        run_search("ista-nas", _task(budget=Budget(params=1e6)), out=tmp_path / "x", preset="tiny",
                   overrides=MICRO, progress=False)
    assert not (tmp_path / "x").exists()


def test_the_global_batch_must_split_over_the_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SearchContext, "world_size", property(lambda self: 3))
    monkeypatch.setattr(SearchContext, "distributed", property(lambda self: True))
    config = resolve_config(ISTAConfig, "tiny", overrides={**MICRO, "batch_size": 16})
    with pytest.raises(ConfigError, match="batch_size=16 does not split over the 3 ranks"):
        ISTASearch().check(_task(), config)
    ISTASearch().check(_task(), replace(config, batch_size=9))  # 3 per rank, 32 // 3 = 10 images per rank: fine
    with pytest.raises(ConfigError, match=r"holds 32 images \(10 per rank\), fewer than one batch of 12"):
        ISTASearch().check(_task(), replace(config, batch_size=36))


def test_smallest_network_bounds_the_space_and_the_size_guard_check_uses_it() -> None:
    """`_smallest_params` is a lower bound on every support of the code space (sampled uniformly), and
    reached by one of them; the check refuses a guard at it and accepts one just above."""
    net = search_mod._eval_net(resolve_config(ISTAConfig, "paper"), _task())
    smallest = search_mod._smallest_params(net, 4)
    mask = torch.arange(35).unsqueeze(0) < torch.tensor([14, 21, 28, 35]).unsqueeze(1)
    sampled = [search_mod._count_params(genotype_from_support(s.tolist()), net)
               for s in uniform_supports(mask, 40, torch.Generator().manual_seed(0))]
    assert min(sampled) > smallest
    pools_from_1 = genotype_from_support([[[1 * 7 + 0, 1 * 7 + 1]] * 4] * 2)  # max/avg pool from c_{k-1}
    assert search_mod._count_params(pools_from_1, net) >= smallest
    config = resolve_config(ISTAConfig, "paper", overrides={"mode": "one-stage", "one_stage.batch_size": 16})
    task = _task()
    with pytest.raises(ConfigError, match="rejects every architecture"):
        ISTASearch().check(task, replace(config, one_stage=replace(config.one_stage, max_params=smallest)))
    ISTASearch().check(task, replace(config, one_stage=replace(config.one_stage, max_params=smallest + 1)))


# ---- the ranking hook reads the halves the search recorded --------------------------------------------------
def test_ranking_hook_refuses_other_data_with_the_same_name(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_search("ista-nas", _task(), out=out, preset="tiny", overrides=MICRO, progress=False)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    train, valid = _task().dataset.train.split(0.5, seed=0)
    assert state["extra"]["halves"] == {"train": train.fingerprint(), "valid": valid.fingerprint()}
    assert len(ISTASearch().sample_and_score(out, _task(), 2, seed=0)) == 2
    other = _task(n=48)  # also "cifar10-mini", seed 0: other halves
    with pytest.raises(ConfigError, match="data halves of this task differ") as err:
        ISTASearch().sample_and_score(out, other, 2, seed=0)
    assert "\n" not in str(err.value)


# ---- the darts-bn space's hooks -------------------------------------------------------------------------------
def _random_case(rng: random.Random) -> tuple[dict, dict]:
    shape = [rng.choice([1, 3]), rng.choice([32, 17]), rng.choice([32, 15])]
    net = {"C": rng.choice([4, 6, 8]), "layers": rng.choice([3, 4, 5]), "auxiliary": rng.random() < 0.5,
           "num_classes": rng.choice([10, 7]), "input": shape}
    if rng.random() < 0.3:
        net["stem"] = "imagenet"
    spec = DARTS_SPACE.random_spec(rng, net)
    for cell in ("normal", "reduce"):
        for entry in spec[cell]:
            if rng.random() < 0.25:
                entry[0] = rng.choice(["none", "conv_3x3", "conv_7x1_1x7", "sep_conv_7x7", "conv_1x1"])
    return spec, net


@pytest.mark.parametrize("space", ["darts-bn", "darts"])
def test_closed_form_costs_equal_the_counted_ones(space: str) -> None:
    """Over random genotypes (null edges and NAT's ops too), both stems, odd input sizes: the closed form
    is exactly count_macs / count_params of the built network (auxiliary head excluded)."""
    rng = random.Random(0)
    sp = get_space(space)
    for _ in range(12):
        spec, net = _random_case(rng)
        spec, net = sp.validate_spec(spec), sp.validate_net(net)
        model = sp.build(spec, net)
        got = darts_costs(spec, net, bn_after_param_free=space == "darts-bn")
        assert got == {"macs": float(count_macs(model, tuple(net["input"]))), "params": float(count_params(model))}
    assert darts_costs({**spec, "normal": [["conv_9x9", 0]] * 8}, net) is None  # no formula: count instead


def test_darts_bn_space_hooks() -> None:
    net = DARTS_BN_SPACE.validate_net({"C": 16, "layers": 8, "num_classes": 10, "input": [3, 32, 32]})
    name, spec, ref_net = DARTS_BN_SPACE.reference(net)
    assert name == "darts-v2" and spec == genotype_to_spec(DARTS_V2) and ref_net == net
    model = DARTS_BN_SPACE.build(spec, ref_net)
    assert DARTS_BN_SPACE.costs(spec, ref_net) == {"macs": float(count_macs(model, (3, 32, 32))),
                                                   "params": float(count_params(model))}
    # DARTS-V2 in darts-bn: a BN after each of its pooling/identity ops, so more params than in darts
    assert DARTS_BN_SPACE.costs(spec, ref_net)["params"] > count_params(DARTS_SPACE.build(spec, ref_net))
    spec2, net2 = DARTS_BN_SPACE.scaled(spec, net, 1.5)
    assert spec2 == spec and net2["C"] == 24
    assert {"layers": 9} in DARTS_BN_SPACE.size_variants(net)


# ---- no host sync inside a one-stage step ---------------------------------------------------------------------
@pytest.mark.parametrize("phase", ["search", "train"])
def test_no_host_sync_in_a_one_stage_step(phase: str, tmp_path: Path) -> None:
    """The conformance test's detector over one-stage searches: search steps (nothing freezes) or, with
    every node frozen at once, mostly train-phase steps (with BNs unfrozen after the start)."""
    over = ({**ONE, "one_stage.freeze_tol": 0.0, "one_stage.max_search_epochs": 2, "one_stage.epochs": 0}
            if phase == "search" else {**ONE, "one_stage.freeze_tol": 1e9, "one_stage.epochs": 2})
    with detect_host_syncs() as report:
        run_search("ista-nas", _task(), out=tmp_path / "one", preset="tiny", overrides=over, progress=False)
    assert report["steps"] >= 4 and not report["found"], report


# ---- data-parallel search ------------------------------------------------------------------------------
_SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    import nas_common.runs as runs
    from nas_common import Task, dist, get_dataset
    from nas_common.search import run_search
    micro, out = json.loads(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    seen = {}
    save_state = runs.Run.save_state
    def spy(self, epoch, **kw):  # every rank's supernet parameters (buffers are per rank, DDP syncs them)
        seen["params"] = dist.tensor_digest(kw["model"]["net"].named_parameters())
        seen["code"] = dist.tensor_digest(kw["model"]["code"].named_parameters())
        return save_state(self, epoch, **kw)
    runs.Run.save_state = spy
    task = Task(get_dataset("cifar10-mini").subset(64, 32), device=torch.device("cpu"), seed=0)
    result, arch = run_search("ista-nas", task, out=out, preset="tiny", overrides=micro, progress=False)
    model = dist.tensor_digest(result.model.named_parameters()) if result.model is not None else None
    digests = dist.gather_objects([seen["params"], seen["code"], model])
    if dist.is_main():
        open(out + "/ranks.json", "w").write(json.dumps(digests))
    dist.barrier()
    dist.cleanup()
''')


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["two-stage", "one-stage"])
def test_two_process_search_keeps_every_rank_equal(mode: str, tmp_path: Path) -> None:
    """torchrun, 2 processes (gloo): the ranks end with the same b and z (rank 0's LASSO), the same
    supernet parameters (DDP) and, one-stage, the same trained network, with BNs unfrozen after DDP
    was set up (every node freezes after epoch 1) averaged like b."""
    micro = MICRO if mode == "two-stage" else {**ONE, "one_stage.freeze_tol": 1e9, "one_stage.epochs": 1}
    script = tmp_path / "ddp.py"
    script.write_text(_SCRIPT)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           json.dumps(micro), str(out)]
    p = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    ranks = json.loads((out / "ranks.json").read_text())
    assert len(ranks) == 2 and ranks[0] == ranks[1], ranks
    result = json.loads((out / "result.json").read_text())
    assert result["provenance"]["world_size"] == 2 and len(set(result["rank_state_digests"])) == 1
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) >= 2 and all("train/loss" in r for r in recs)  # rank 0 logs once per epoch
