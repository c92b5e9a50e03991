"""The search loop's semantics, on toy rewards: the policy moves toward what the reward favours, the
baseline tracks the reward, inference keeps the best candidate, and w trains on the inputs only (so
the paper's baselines share one supernet)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from nas_common.data import get_dataset
from nas_common.errors import ConfigError
from nas_common.methods import Task
from nas_common.search import run_search
from nat_nas import NATSearch
from nat_nas.cells import NULL_OP, CellPair
from nat_nas.search import TransformedPair
from nat_nas.transitions import NULL

MICRO: dict[str, Any] = {
    "C": 4, "layers": 3, "epochs": 2, "batch_size": 8, "policy_embed": 8, "policy_features": 16,
    "policy_hidden": 8, "num_samples": 4, "eval_batch_size": 32, "max_eval_batches": 1, "net_C": 4,
    "net_layers": 3, "warmup_epochs": 0, "reward_batches": 1, "input_as_candidate": False,
}


def _task(seed: int = 0) -> Task:
    return Task(dataset=get_dataset("cifar10-mini").subset(64, 32), seed=seed)


def _nulls(pair: CellPair | TransformedPair) -> torch.Tensor | int:
    """Null edges of a cell pair, or of a transform the policy step keeps on the device (its actions)."""
    if isinstance(pair, TransformedPair):
        return (pair.actions == NULL).sum() + _nulls(pair.beta)
    return sum(canonical == NULL_OP for c in pair.cells() for canonical in c.ops)


class NullLover(NATSearch):
    """Toy reward: a cell pair's 'accuracy' is its share of null edges (the prior draws none)."""

    def _batch_accuracy(self, parts: Any, x: torch.Tensor, y: torch.Tensor, pair: Any) -> torch.Tensor:
        return torch.as_tensor(_nulls(pair) / 16.0, dtype=torch.float32)


class AnyNull(NATSearch):
    """Toy reward: 0.2 without a null edge (every input), 0.6 with one (almost every transform)."""

    def _batch_accuracy(self, parts: Any, x: torch.Tensor, y: torch.Tensor, pair: Any) -> torch.Tensor:
        return torch.where(torch.as_tensor(_nulls(pair)) > 0, 0.6, 0.2)


def _null_prob(run_dir: Path, task: Task) -> float:
    """Mean P(null) over the input's (DARTS-V2's) edges that may become null, under the saved policy."""
    search = NATSearch()
    parts = search._load_policy(str(run_dir), task, task.device)
    from nat_nas.search import NATConfig, resolve_input_arch

    cfg = NATConfig(**{k: v for k, v in MICRO.items() if k in NATConfig.__dataclass_fields__})
    pair = CellPair.from_spec(resolve_input_arch("darts-v2").spec)
    masks = search._masks(pair, search._edge_costs(cfg, task))
    probs = search._input_probs(parts, pair, masks)
    return probs[..., NULL][masks[..., NULL]].mean().item()


def _null_prob_before_and_after(tmp_path: Path, cfg: dict[str, Any]) -> tuple[float, float, dict[str, Any]]:
    """P(null) of the policy at its initialisation (one epoch at a zero learning rate) and after a
    NullLover search with `cfg`, and that search's final metrics."""
    task = _task()
    run_search(NullLover, task, out=tmp_path / "fresh", preset="tiny", overrides={**cfg, "epochs": 1, "policy_lr": 0.0},
               progress=False)
    result, _ = run_search(NullLover, task, out=tmp_path / "toy", preset="tiny", overrides=cfg, progress=False)
    return _null_prob(tmp_path / "fresh", task), _null_prob(tmp_path / "toy", task), result.metrics


def test_policy_moves_toward_the_rewarded_transform(tmp_path: Path) -> None:
    """Flipping the reward's sign (or the loss's) makes P(null) fall instead of rise: this fails."""
    cfg = {**MICRO, "epochs": 6, "policy_lr": 0.02, "baseline_decay": 0.5, "weight_fraction": 0.2}
    before, after, m = _null_prob_before_and_after(tmp_path, cfg)
    assert m["search/policy_steps"] > 0 and m["search/reward"] > 0
    assert after > before + 0.2, (before, after)
    assert m["search/prob_shift"] > 0.2  # the log's view of the same movement
    assert m["search/keep_prob"] < 0.3


def test_several_samples_per_input_move_the_policy_with_leave_one_out_baselines(tmp_path: Path) -> None:
    """policy_samples=3: the same movement with each sample's baseline the other samples' mean."""
    cfg = {**MICRO, "epochs": 4, "policy_lr": 0.02, "weight_fraction": 0.2, "policy_samples": 3}
    before, after, m = _null_prob_before_and_after(tmp_path, cfg)
    assert m["search/reward"] > 0
    assert after > before + 0.2, (before, after)


class SameGain(NATSearch):
    """Toy reward: every transform scores 0.6, every input 0.2, so each sample's reward is exactly 0.4."""

    def _batch_accuracy(self, parts: Any, x: torch.Tensor, y: torch.Tensor, pair: Any) -> torch.Tensor:
        return torch.tensor(0.6 if isinstance(pair, TransformedPair) else 0.2)


@pytest.mark.parametrize("samples", [1, 3])
def test_equal_rewards_move_the_policy_only_under_the_moving_baseline(tmp_path: Path, samples: int) -> None:
    """K = 3 samples with equal rewards: leave-one-out advantages are 0 and the policy stays exactly put
    (no entropy bonus, no weight decay); K = 1's moving baseline starts at 0 and moves it."""
    cfg = {**MICRO, "epochs": 2, "policy_lr": 0.02, "weight_fraction": 0.2, "policy_samples": samples,
           "entropy_normal": 0.0, "entropy_reduce": 0.0, "policy_weight_decay": 0.0}
    result, _ = run_search(SameGain, _task(), out=tmp_path / "g", preset="tiny", overrides=cfg, progress=False)
    m = result.metrics
    assert m["search/policy_steps"] > 0 and m["search/reward"] == pytest.approx(0.4)
    assert (m["search/prob_shift"] == 0.0) == (samples > 1), m["search/prob_shift"]


def test_baseline_tracks_the_reward_in_the_search_loop(tmp_path: Path) -> None:
    """With a (nearly) constant reward 0.4 the baseline ends at 0.4; the official r - b update gives 0.2."""
    cfg = {**MICRO, "epochs": 3, "baseline_decay": 0.5, "policy_lr": 0.0, "weight_fraction": 0.2}
    result, _ = run_search(AnyNull, _task(), out=tmp_path / "b", preset="tiny", overrides=cfg, progress=False)
    assert result.metrics["search/policy_steps"] >= 4
    assert result.metrics["search/baseline"] == pytest.approx(0.4, abs=0.02)


def test_warmup_epochs_train_the_supernet_alone(tmp_path: Path) -> None:
    cfg = {**MICRO, "epochs": 3, "warmup_epochs": 2, "weight_fraction": 0.2}
    run_search(NullLover, _task(), out=tmp_path / "w", preset="tiny", overrides=cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    log = [r for r in log if "search/policy_steps" in r]
    assert [r["search/policy_steps"] for r in log[:2]] == [0, 0] and log[2]["search/policy_steps"] > 0, log
    assert [r["search/prob_shift"] for r in log[:2]] == [0.0, 0.0] and log[2]["search/prob_shift"] > 0
    assert all(r["train/loss"] > 0 for r in log)


class ScoredByNulls(NATSearch):
    """Toy scorer for inference: the more null edges, the higher the held-out 'accuracy'."""

    sign = 1.0

    def _accuracies(self, parts: Any, pairs: list[CellPair], split: Any, config: Any, task: Task,
                    run: Any = None, calibration: Any = None) -> list[float]:
        return [0.5 + self.sign * _nulls(p) / 100.0 for p in pairs]


class ScoredAgainstNulls(ScoredByNulls):
    sign = -1.0


def _candidates(result: Any) -> tuple[list[CellPair], list[float]]:
    return [CellPair.from_spec(s) for s in result.state["candidates"]], result.state["candidate_acc"]


def test_inference_keeps_the_best_candidate(tmp_path: Path) -> None:
    """Picking the worst (or any but the best) scored candidate fails this."""
    cfg = {**MICRO, "epochs": 1, "num_samples": 6}
    result, arch = run_search(ScoredByNulls, _task(), out=tmp_path / "best", preset="tiny", overrides=cfg,
                              progress=False)
    cands, accs = _candidates(result)
    assert len(set(accs)) > 1  # the candidates differ, so the choice matters
    best = max(range(len(cands)), key=lambda k: accs[k])
    assert CellPair.from_spec(arch.spec) == cands[best]
    assert result.metrics["search/top1_best"] == max(accs) and not result.state["chosen_is_input"]


def test_the_input_is_a_candidate_so_the_output_is_never_worse(tmp_path: Path) -> None:
    cfg = {**MICRO, "epochs": 1, "num_samples": 6}
    # every transform nulls something, so it scores below the input here
    result, arch = run_search(ScoredAgainstNulls, _task(), out=tmp_path / "in", preset="tiny",
                              overrides={**cfg, "input_as_candidate": True}, progress=False)
    assert result.state["chosen_is_input"] and arch.spec == result.state["input_spec"]
    m = result.metrics
    assert m["search/top1_best"] >= m["search/top1_input"] > max(result.state["candidate_acc"])
    # without it (the paper's rule) a transform comes out, even a worse one
    result, arch = run_search(ScoredAgainstNulls, _task(), out=tmp_path / "out", preset="tiny",
                              overrides=cfg, progress=False)
    m = result.metrics
    assert not result.state["chosen_is_input"] and m["search/top1_best"] < m["search/top1_input"]


def test_greedy_inference_is_the_most_probable_transform(tmp_path: Path) -> None:
    cfg = {**MICRO, "epochs": 1, "inference": "greedy"}
    result, arch = run_search(NATSearch, _task(), out=tmp_path / "g", preset="tiny", overrides=cfg, progress=False)
    assert len(result.state["candidates"]) == 1
    search = NATSearch()
    parts = search._load_policy(str(tmp_path / "g"), _task(), torch.device("cpu"))
    pair = CellPair.from_spec(result.state["input_spec"])
    from nat_nas.search import NATConfig

    masks = search._masks(pair, search._edge_costs(NATConfig(**{k: v for k, v in cfg.items()}), _task()))
    probs = search._input_probs(parts, pair, masks)
    out = CellPair.from_spec(result.state["candidates"][0])
    from nat_nas.transitions import actions_between

    acts = torch.tensor([actions_between(a, b) for a, b in zip(pair.cells(), out.cells(), strict=True)])
    torch.testing.assert_close(acts, probs.argmax(-1))


@pytest.fixture(scope="module")
def gcn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gcn") / "run"
    run_search("nat", _task(), out=out, preset="tiny", overrides=MICRO, progress=False)
    return out


def _supernet(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]["supernet"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_w_trains_on_the_inputs_only_so_every_policy_gets_the_same_supernet(gcn_run: Path, tmp_path: Path) -> None:
    """The LSTM baseline's search trains the GCN search's supernet bit for bit (w never reads the policy);
    with `train_on_transforms` (w on CE(beta) + CE(alpha)) it would not."""
    run_search("nat", _task(), out=tmp_path / "lstm", preset="tiny", overrides={**MICRO, "policy_type": "lstm"},
               progress=False)
    assert _same(_supernet(gcn_run), _supernet(tmp_path / "lstm"))
    run_search("nat", _task(), out=tmp_path / "both", preset="tiny",
               overrides={**MICRO, "train_on_transforms": True}, progress=False)
    assert not _same(_supernet(gcn_run), _supernet(tmp_path / "both"))


def test_random_transforms_reuse_a_search_s_supernet(gcn_run: Path, tmp_path: Path) -> None:
    cfg = {**MICRO, "policy": str(gcn_run), "policy_type": "random"}
    result, arch = run_search("nat", _task(), out=tmp_path / "r", preset="tiny", overrides=cfg, progress=False)
    assert result.state["policy_type"] == "random" and arch.costs["macs"] <= arch.costs["input_macs"]
    with pytest.raises(ConfigError, match="policy_type=gcn"):
        run_search("nat", _task(), out=tmp_path / "l", preset="tiny",
                   overrides={**MICRO, "policy": str(gcn_run), "policy_type": "lstm"}, progress=False)


def test_no_host_sync_with_the_other_options(tmp_path: Path) -> None:
    """The conformance test runs the GCN with batch-statistics rewards; the LSTM policy, w trained on the
    transforms too, eval-mode rewards and several samples per input must not sync inside a step either."""
    from nas_common.syncs import detect_host_syncs

    cfg = {**MICRO, "policy_type": "lstm", "train_on_transforms": True, "score_bn": "running", "policy_samples": 2}
    with detect_host_syncs() as report:
        run_search("nat", _task(), out=tmp_path / "s", preset="tiny", overrides=cfg, progress=False)
    assert report["steps"] >= 4 and not report["found"], report
