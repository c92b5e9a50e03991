"""NAT as a nas_common search method: `NATSearch` (name "nat") and `NATConfig`.

One search = (1) train the shared supernet and the policy, epoch by epoch, (2) transform the input
architecture: sample `num_samples` transformations from the policy (or take its most probable one,
`inference="greedy"`, the paper's Maximum-GCN) and keep the one with the best held-out accuracy under
the shared weights. With `policy=RUN_DIR` step (1) is skipped: the supernet and policy of an earlier
NAT search (its final checkpoint, read through `Run.open`) transform a new `input_arch`.

Per epoch (the official code's `train_search.py`; the paper's Algorithm 1 could not be retrieved here,
see the README):

* weights w on the first 40% of the training split: per batch an input beta ~ p(.) (uniform, normal
  and reduction cell apart) and one SGD step on CE(beta). `train_on_transforms=true` also trains on the
  policy's transform alpha ~ pi(.|beta), CE(beta) + CE(alpha) (not the official code).
* policy theta on the other 60%, from epoch `warmup_epochs` on: per step beta ~ p(.), alpha ~
  pi(.|beta); reward r = acc(alpha) - acc(beta) with the shared weights on the same held-out images
  (`reward_batches` batches, averaged; no grad; BN per `score_bn`); loss = -(log pi_n + log pi_r)(r - b)
  - 0.003 H_n - 0.003 H_r; Adam. The baseline tracks the reward, b <- 0.99 b + 0.01 r (the official
  code feeds r - b back into it: a bug we fix). `policy_samples=K > 1` (not the paper) draws K
  transforms of each beta, scored on the same batches, and gives each the mean reward of the other
  K - 1 as its baseline (leave-one-out REINFORCE).

No host-device sync inside a step. Everything that does not depend on the policy is drawn per epoch,
before the steps: beta of every w step and of every policy step (the prior is uniform and independent
of theta), their masks, and, with `train_on_transforms`, the w steps' alpha (the policy does not change
during the w phase). The policy's actions change every step, so alpha stays on the device: its forward
runs beta's ops and the skips the mask allows, each scaled by a 0/1 gate from the actions (and by the
liveness of its source, as the sparse forward drops edges out of dead nodes), which gives the sparse
forward of alpha exactly (tested) without reading the actions back.

The w steps draw beta from their own generator and never read the policy (unless
`train_on_transforms`), so two searches with the same seed and different `policy_type` train the
same supernet bit for bit: the paper's baselines compare on one supernet.

Data-parallel (torchrun, `task.context`): the supernet is wrapped in DDP for the w steps (sharded
loaders, the same beta on every rank); the per-epoch plans are rank 0's (`ctx.decide`), the per-step
actions are rank 0's (broadcast on the device), the rewards are averaged over ranks before the policy
loss, the policy's gradients are averaged, and the final scoring and choice are made on rank 0.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from nas_common.arch import Arch, get_arch
from nas_common.config import Config
from nas_common.context import SearchContext
from nas_common.costs.tables import op_costs
from nas_common.data import make_loader
from nas_common.errors import ArchFileError, ConfigError, NASError
from nas_common.methods import CliOption, SearchMethod, SearchResult, Task
from nas_common.oneshot import Accumulator, batch_statistics, score_candidates
from nas_common.runs import Run
from nas_common.spaces.darts import GENOTYPES, DartsSupernet, genotype_to_spec, reduction_layers

from .cells import NULL_OP, SKIP_OP, Cell, CellPair, canonical_op, random_cell, sample_prior
from .policy import POLICIES, TransformPolicy, build_policy
from .transitions import KEEP, NULL, SKIP, apply_actions, prior_mask_table, transition_mask

log = logging.getLogger(__name__)

#: the official code's "fully concat" op set (DARTS' ops + conv_3x3; null is NAT's N, never run)
FULLY_CONCAT_OPS: tuple[str, ...] = (
    "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
    "dil_conv_5x5", "conv_3x3",
)

#: seeds of the search's own random streams, offset from the task seed: the w steps' inputs, the
#: policy's actions (device), inference, and the policy steps' inputs
_W_STREAM, _POLICY_STREAM, _INFERENCE_STREAM, _BETA_STREAM = 11, 13, 17, 19

#: `score_bn` -> `nas_common.oneshot.score_candidates(bn=...)`
_SCORE_BN = {"batch": "batch", "running": "eval", "recalibrate": "recalibrate"}


@dataclass(frozen=True)
class NATConfig(Config):
    """NAT's settings; the defaults are the paper's (official code) values for CIFAR-10."""

    # what to transform, and with which policy
    input_arch: str = "darts-v2"  # a genotype name (darts-v2, enas, resnet-block, vgg-block, ...) or an arch.json
    policy: str = ""  # the run directory of an earlier NAT search: transform with its policy, without training
    policy_type: str = "gcn"  # gcn (NAT), lstm (the paper's LSTM baseline), random (its random search)
    # the supernet and its weights w
    C: int = 20
    layers: int = 8
    ops: tuple[str, ...] = FULLY_CONCAT_OPS
    epochs: int = 100
    batch_size: int = 64  # global: split over the ranks under torchrun
    lr: float = 0.01
    lr_min: float = 0.01  # the official cosine schedule ends at its start value: constant in effect
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 0.0  # 0: no clipping (the official code does not clip)
    weight_fraction: float = 0.4  # share of the training split for w; the rest trains the policy
    split_seed: int = 1234
    augment: bool = True  # random crop + flip on w's batches (no cutout)
    train_on_transforms: bool = False  # true: w also on alpha ~ pi(.|beta), CE(beta) + CE(alpha)
    # the policy theta
    warmup_epochs: int = 0  # supernet-only epochs before the first policy update (official flag, 0)
    reward_batches: int = 1  # held-out batches per reward (official: 1, the step's own batch)
    policy_lr: float = 3e-4
    policy_betas: tuple[float, float] = (0.5, 0.999)
    policy_weight_decay: float = 5e-4
    policy_embed: int = 100  # op embedding size (per edge)
    policy_features: int = 1024  # node features after the projection (GCN)
    policy_hidden: int = 100  # GCN (or LSTM) hidden size
    policy_dropout: float = 0.0
    entropy_normal: float = 0.003
    entropy_reduce: float = 0.003
    baseline_decay: float = 0.99
    # transforms sampled per input beta in a policy step (the paper: 1, with the moving baseline above);
    # K > 1: each sample's baseline is the mean reward of the other K - 1 on the same beta and batches
    # (leave-one-out REINFORCE), which removes beta's difficulty from the advantage
    policy_samples: int = 1
    # paper: O->{O,S,N}, S->{S,N}, N->{N}; published: also N->S where the built network gets no costlier
    transition_rules: Literal["paper", "published"] = "paper"
    # how BatchNorm normalises when architectures are scored (no grad): "batch", the batch's statistics,
    # leaving the running ones untouched (the official code's train-mode scoring); "recalibrate", the
    # running statistics re-estimated per candidate on `recalibrate_batches` batches of the w split
    # (rewards then use batch statistics); "running", the supernet's running statistics (eval mode)
    score_bn: Literal["batch", "recalibrate", "running"] = "batch"
    recalibrate_batches: int = 8  # batches of eval_batch_size images for score_bn="recalibrate"
    # inference
    num_samples: int = 10  # transformations sampled; the best by held-out accuracy is kept
    inference: Literal["sample", "greedy"] = "sample"  # greedy: the most probable transform (Maximum-GCN)
    input_as_candidate: bool = False  # also score the input itself: the output is never worse than it
    eval_batch_size: int = 256
    max_eval_batches: int = 0  # 0: the whole held-out split
    # the derived (evaluation) network
    net_C: int = 36
    net_layers: int = 20
    net_auxiliary: bool = True
    net_stem: Literal["cifar", "imagenet"] = "cifar"  # imagenet: DARTS' ImageNet stems (resolution / 8)
    # false: DARTS' own layout (both cell inputs preprocessed, every op run; net.prune_dead=false), the
    # network the official code's outputs were counted on; with transition_rules="published" any null
    # edge may then become a stride-1 skip (free there). True: nas_common's layout (no dead ops)
    net_prune_dead: bool = True
    net_input_size: int = 0  # 0: the dataset's image size
    net_num_classes: int = 0  # 0: the dataset's classes

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        # the paper's search with the cells transferred to DARTS' ImageNet network (C 48, 14 cells, 224 px)
        "imagenet": {"net_C": 48, "net_layers": 14, "net_stem": "imagenet", "net_input_size": 224,
                     "net_num_classes": 1000},
        # CPU minutes on cifar10-mini: a small supernet (the paper's constant lr 0.01; 0.05 made its loss
        # rise) trained alone for 6 epochs before 4 epochs with policy updates (a policy trained on a
        # supernet at chance gets an all-zero reward); rewards on two batches; for ~90 policy steps a
        # faster policy lr and a baseline that follows the reward within ~10 steps; the input among the
        # candidates, scored on 1,000 held-out images
        "tiny": {"C": 8, "layers": 5, "epochs": 10, "warmup_epochs": 6, "batch_size": 64, "reward_batches": 2,
                 "policy_lr": 1e-3, "baseline_decay": 0.9, "policy_features": 128, "input_as_candidate": True,
                 "eval_batch_size": 500, "max_eval_batches": 2},
    }

    def __post_init__(self) -> None:
        checks = [
            (self.C >= 1 and self.layers >= 1, "C and layers must be positive"),
            (self.epochs >= 0, "epochs must be >= 0"),
            (self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be positive"),
            (0.0 < self.weight_fraction < 1.0, "weight_fraction must be in (0, 1), e.g. 0.4"),
            (self.num_samples >= 1, "num_samples must be >= 1"),
            (0.0 <= self.baseline_decay < 1.0, "baseline_decay must be in [0, 1)"),
            (self.policy_samples >= 1, "policy_samples must be >= 1"),
            (self.max_eval_batches >= 0, "max_eval_batches must be >= 0 (0 = all)"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.reward_batches >= 1, "reward_batches must be >= 1"),
            (self.recalibrate_batches >= 1, "recalibrate_batches must be >= 1"),
            (self.net_C >= 1 and self.net_layers >= 1, "net_C and net_layers must be positive"),
            (self.net_input_size >= 0 and self.net_num_classes >= 0,
             "net_input_size and net_num_classes must be >= 0 (0 = the dataset's)"),
            (self.policy_type in POLICIES, f"policy_type {self.policy_type!r} is unknown: valid: "
                                           f"{', '.join(POLICIES.names())}"),
            (len(self.ops) > 0 and all(canonical_op(o) != NULL_OP for o in self.ops),
             "ops must list the supernet's real ops (null is implied)"),
            (SKIP_OP in self.ops, f"ops must include {SKIP_OP} (NAT's skip action runs it)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"NATConfig: {msg}")


# ---- input architectures -----------------------------------------------------------------------------

def resolve_input_arch(name: str) -> Arch:
    """The `darts`-space Arch to transform: a genotype name, a built-in arch name, an arch.json or a run dir."""
    key = name.lower().replace("_", "-")
    if key in GENOTYPES:
        return Arch("darts", genotype_to_spec(GENOTYPES[key]), {}, provenance={"source": key})
    try:
        arch = get_arch(name)
    except ArchFileError as e:
        raise ConfigError(f"input_arch: {e}; or one of the DARTS-space genotypes "
                          f"{', '.join(sorted(GENOTYPES))}") from None
    if arch.space != "darts":
        raise ConfigError(f"input_arch {name!r} is in the {arch.space!r} space: NAT transforms cells of the "
                          f"'darts' space (genotypes such as darts-v2, resnet-block, vgg-block)")
    return arch


def cell_positions(C: int, layers: int, size: int, reduction: bool, stem: str = "cifar") -> list[tuple[int, int]]:
    """(channels, input size) of every cell of one type in a DARTS network (distinct pairs).

    The ImageNet stems divide the resolution by 8 (three stride-2 convs) before the first cell."""
    if stem == "imagenet":
        for _ in range(3):
            size = -(-size // 2)
    reductions = reduction_layers(layers)
    out: list[tuple[int, int]] = []
    for i in range(layers):
        if i in reductions:
            C *= 2
            if reduction and (C, size) not in out:
                out.append((C, size))
            size = -(-size // 2)
        elif not reduction and (C, size) not in out:
            out.append((C, size))
    return out


class EdgeCosts:
    """`cost_of(op, stride)` for the transition masks: (MACs, params) of an op at every place the cell
    type occurs in the derived network (nas_common's per-op cost tables, cached). In a reduction cell
    the stride-2 edges read the input resolution, the stride-1 edges the halved one."""

    def __init__(self, C: int, layers: int, size: int, reduction: bool, stem: str = "cifar") -> None:
        self.positions = cell_positions(C, layers, size, reduction, stem)
        self.reduction = reduction
        self._cache: dict[tuple[str, int], tuple[float, ...]] = {}

    def __call__(self, op: str, stride: int) -> tuple[float, ...]:
        key = (canonical_op(op), stride)
        if key not in self._cache:
            vals: list[float] = []
            # building an op to count it draws its init from the global RNG: keep the search's stream
            # the same whether or not the (process-wide) cost cache already holds it
            with torch.random.fork_rng(devices=[]):
                for C, size in self.positions:
                    h = -(-size // 2) if self.reduction and stride == 1 else size
                    c = op_costs(key[0], C, stride, h, h)
                    vals += [float(c["macs"]), float(c["params"])]
            self._cache[key] = tuple(vals)
        return self._cache[key]


def reinforce_step(log_prob: torch.Tensor, entropy: torch.Tensor, reward: torch.Tensor, baseline: torch.Tensor,
                   entropy_coeffs: tuple[float, float], decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NAT's policy loss and the next baseline.

    loss = -(sum of log pi over the cells) * (r - b) - sum_c coeff_c * H_c, with `log_prob` and `entropy`
    per cell type (normal, reduce). The baseline is a moving average of the reward, b <- decay * b +
    (1 - decay) * r (the official code averages r - b instead, so its b settles at half the reward).
    """
    loss = -log_prob.sum() * (reward - baseline).detach() - _entropy_bonus(entropy, entropy_coeffs)
    return loss, moving_baseline(baseline, reward, decay)


def moving_baseline(baseline: torch.Tensor, reward: torch.Tensor, decay: float) -> torch.Tensor:
    """b <- decay * b + (1 - decay) * r, detached."""
    return (decay * baseline + (1.0 - decay) * reward).detach()


def _entropy_bonus(entropy: torch.Tensor, coeffs: tuple[float, float]) -> torch.Tensor:
    """sum_c coeff_c * H_c over the cell types (normal, reduce)."""
    return sum(c * h for c, h in zip(coeffs, entropy.unbind(0), strict=True))


def leave_one_out_step(log_prob: torch.Tensor, entropy: torch.Tensor, rewards: torch.Tensor,
                       entropy_coeffs: tuple[float, float]) -> torch.Tensor:
    """The policy loss of K >= 2 transforms of one input (leave-one-out REINFORCE, Kool et al. 2019).

    `log_prob` (K, 2): log pi of each sample per cell type; `entropy` (2,): the policy's entropy on the
    input per cell type; `rewards` (K,). Sample k's baseline is the mean reward of the other K - 1, an
    unbiased estimate that sees the same input and the same held-out batches, so what makes one input
    easy or hard cancels: loss = -mean_k sum_c log pi_k,c * (r_k - mean_{j != k} r_j) - sum_c coeff_c H_c.
    """
    k = rewards.shape[0]
    if k < 2:
        raise ValueError("leave-one-out needs at least two samples")
    # r_k - mean_{j != k} r_j as the mean of the pairwise differences: exactly 0 on equal rewards, where
    # (sum - r_k) / (K - 1) is off by rounding, which Adam would scale up to a full step
    advantage = ((rewards.unsqueeze(1) - rewards.unsqueeze(0)).sum(1) / (k - 1)).detach()
    return -(log_prob.sum(-1) * advantage).mean() - _entropy_bonus(entropy, entropy_coeffs)


def _groups(batches: Iterable[Any], k: int) -> Iterator[list[Any]]:
    """Consecutive groups of `k` batches (the last one may be shorter)."""
    group: list[Any] = []
    for b in batches:
        group.append(b)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Inside: `module` in eval mode; its training flag is put back on exit."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


# ---- the method --------------------------------------------------------------------------------------

@dataclass
class _Parts:
    supernet: DartsSupernet
    policy: TransformPolicy
    primitives: tuple[str, ...]
    steps: int
    meta: dict[str, Any] = field(default_factory=dict)
    source: NATConfig | None = None  # the config of the search that trained them (a reused policy)


@dataclass(frozen=True)
class TransformedPair:
    """alpha: the cell pair `beta` after the policy's `actions` ((2, edges) on the device, never read back
    on the host). `skip_ok[cell type][edge]` (host) says where the mask allows a skip, so that only those
    skip ops run in alpha's forward."""

    beta: CellPair
    actions: torch.Tensor
    skip_ok: Sequence[Sequence[bool]]


class _PriorMasks:
    """The masks of prior samples, looked up: `allowed[cell type, vocab op, stride index]`."""

    def __init__(self, vocab: list[str], costs: tuple[EdgeCosts, EdgeCosts], device: torch.device) -> None:
        self.allowed = torch.stack([prior_mask_table(vocab, c) for c in costs]).to(device)  # (2, V, 2, 3)
        self.cell_type = torch.arange(2, device=device).unsqueeze(1)  # row 0 normal, row 1 reduce

    def __call__(self, ops: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """(..., 2, E, 3) masks of cells given by (..., 2, E) vocab ops and inputs (normal, reduce)."""
        stride2 = ((self.cell_type == 1) & (inputs < 2)).long()
        return self.allowed[self.cell_type, ops, stride2]


class _SparseForward(nn.Module):
    """The supernet's sparse forwards as `forward` (DDP averages the gradients of what `forward` ran):
    `forward(x, *plans)` returns the logits of each plan (normal, reduce, normal_concat, reduce_concat)."""

    def __init__(self, supernet: DartsSupernet) -> None:
        super().__init__()
        self.supernet = supernet

    def forward(self, x: torch.Tensor, *plans: tuple[Any, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(self.supernet.forward_sparse(x, *plan) for plan in plans)


class _Batches:
    """The first `limit` batches of `loader` (0: all), re-iterable (one pass per candidate group)."""

    def __init__(self, loader: Iterable[Any], limit: int = 0) -> None:
        self.loader, self.limit = loader, limit

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.loader), self.limit or None)


class NATSearch(SearchMethod):
    """Neural Architecture Transformer (Guo et al., NeurIPS 2019) on the DARTS cell space."""

    name: ClassVar[str] = "nat"
    spaces = ("darts",)
    cli_options = (
        CliOption("--input-arch", key="input_arch", metavar="ARCH",
                  help="the architecture to transform: a genotype name or an arch.json (= -o input_arch=ARCH)"),
        CliOption("--policy", key="policy", metavar="RUN_DIR",
                  help="transform with the policy of an earlier NAT search, without training (= -o policy=RUN_DIR)"),
    )
    config_cls: ClassVar[type] = NATConfig

    # ---- refusals, before anything is written ---------------------------------------------------------
    def check(self, task: Task, config: NATConfig) -> None:
        """Refuses an input arch that does not exist or is not a `darts` cell pair, a policy that is not a
        finished NAT search for this task (or does not fit the input), and, when training, a search that
        would leave the supernet or the policy untrained (epochs 0, warm-up to the end, too little data)."""
        super().check(task, config)
        _, pair = self._input(config)
        if config.policy:
            _, state = self._source(config.policy, task)
            meta = state["extra"]["meta"]
            self._check_policy_type(meta, config.policy_type, config.policy)
            self._check_fits(meta, pair, config.policy)
            return
        if config.epochs < 1:
            raise ConfigError(f"epochs={config.epochs} would transform the input with an untrained supernet and "
                              f"policy: set epochs >= 1, or pass --policy RUN_DIR to reuse a trained one")
        if self._trainable(config.policy_type) and config.warmup_epochs >= config.epochs:
            raise ConfigError(f"warmup_epochs={config.warmup_epochs} >= epochs={config.epochs}: the policy would "
                              f"never train; lower warmup_epochs (or set policy_type=random)")
        ctx = task.context
        ranks, batch = ctx.world_size, ctx.per_rank_batch(config.batch_size)  # the global batch, split
        for what, split in zip(("weight", "policy"), self._splits(task, config), strict=True):
            if len(split) // ranks < batch:
                per_rank = f" ({len(split) // ranks} per rank, {batch} a step)" if ranks > 1 else ""
                raise ConfigError(f"the {what} part of the training split holds {len(split)} images{per_rank}, "
                                  f"fewer than batch_size={config.batch_size}: lower batch_size or use more data")

    @staticmethod
    def _trainable(policy_type: str) -> bool:
        return build_policy(policy_type, [NULL_OP, SKIP_OP], 1, 1, 1, 0.0, 4).trainable

    @staticmethod
    def _input(config: NATConfig) -> tuple[Arch, CellPair]:
        arch = resolve_input_arch(config.input_arch)
        try:
            pair = CellPair.from_spec(arch.spec)
        except ArchFileError as e:
            raise ConfigError(f"input_arch {config.input_arch!r}: {e}") from None
        if pair.reduce.num_nodes != pair.normal.num_nodes:
            raise ConfigError(f"input_arch: the normal cell has {pair.normal.num_nodes} nodes and the reduction "
                              f"cell {pair.reduce.num_nodes}; NAT's supernet needs the same number in both")
        return arch, pair

    @staticmethod
    def _splits(task: Task, config: NATConfig) -> tuple[Any, Any]:
        """(w's part, the policy's held-out part) of the training split."""
        return task.dataset.train.split(config.weight_fraction, seed=config.split_seed)

    # ---- search ------------------------------------------------------------------------------------
    def search(self, task: Task, config: NATConfig, run: Run) -> SearchResult:
        ctx = task.context
        input_arch, pair = self._input(config)
        costs = self._edge_costs(config, task)
        if config.policy:
            parts = self._load_policy(config.policy, task, task.device, config.policy_type)
            source = parts.source or config
            metrics: dict[str, Any] = {"search/policy_from": str(config.policy)}
        else:
            source = config
            parts = self._build(config, task, pair, task.device)
            w_split, p_split = self._splits(task, config)
            metrics = self._train(task, config, run, ctx, parts, w_split, p_split, costs, pair)
        # a reused supernet is scored on the held-out part of its own search
        w_split, p_split = self._splits(task, source)
        return self._transform(task, config, run, ctx, parts, pair, input_arch, w_split, p_split, costs, metrics)

    def _edge_costs(self, config: NATConfig, task: Task) -> tuple[EdgeCosts, EdgeCosts]:
        size = config.net_input_size or min(task.input_shape[1:])
        return (EdgeCosts(config.net_C, config.net_layers, size, False, config.net_stem),
                EdgeCosts(config.net_C, config.net_layers, size, True, config.net_stem))

    # ---- building the supernet and policy, reading back an earlier search's --------------------------
    def _build(self, config: NATConfig, task: Task, pair: CellPair, device: torch.device) -> _Parts:
        primitives = list(config.ops)
        for cell in pair.cells():  # ops of the input that the op set lacks (e.g. NASNet's sep_conv_7x7)
            for op in cell.ops:
                if canonical_op(op) != NULL_OP and op not in primitives:
                    primitives.append(op)
        steps = pair.normal.num_nodes
        c_in = task.input_shape[0]
        supernet = DartsSupernet(config.C, task.num_classes, config.layers, primitives, steps=steps,
                                 multiplier=steps, input_channels=c_in).to(device)
        policy = build_policy(config.policy_type, [NULL_OP, *primitives], config.policy_embed,
                              config.policy_features, config.policy_hidden, config.policy_dropout,
                              steps + 2).to(device)
        meta = {"C": config.C, "layers": config.layers, "primitives": primitives, "steps": steps,
                "num_classes": task.num_classes, "input_shape": list(task.input_shape),
                "policy_type": config.policy_type, "policy_embed": config.policy_embed,
                "policy_features": config.policy_features, "policy_hidden": config.policy_hidden,
                "policy_dropout": config.policy_dropout}
        return _Parts(supernet, policy, tuple(primitives), steps, meta)

    def _source(self, where: str | Path, task: Task) -> tuple[NATConfig, dict[str, Any]]:
        """The config and final checkpoint of the finished NAT search in run directory `where`, checked
        against `task` (its data and held-out images); one-line ConfigErrors otherwise."""
        label = f"policy={str(where)!r}"
        p = Path(where)
        if p.is_file():
            raise ConfigError(f"{label} is a file: give the run directory (--out) of a finished `nas search nat`")
        try:
            run = Run.open(p, method=self.name, task=task, same_seed=False)
            cfg = run.config(NATConfig)
        except NASError as e:
            raise ConfigError(f"{label}: {e}") from None
        if cfg.policy:
            raise ConfigError(f"{label} trained no policy of its own (it reused the one of {cfg.policy!r}): "
                              f"pass policy={cfg.policy}")
        try:
            state = run.final_state(cfg.epochs, map_location="cpu", keys=("supernet", "policy"))
        except NASError as e:
            raise ConfigError(f"{label}: {e}") from None
        extra = state.get("extra") or {}
        meta = extra.get("meta")
        if not isinstance(meta, dict):
            raise ConfigError(f"{label}: its checkpoint holds no NAT policy (another version of nat-nas?): "
                              f"search again")
        if meta["num_classes"] != task.num_classes or list(meta["input_shape"]) != list(task.input_shape):
            raise ConfigError(f"{label} was trained for {meta['num_classes']} classes of {meta['input_shape']} "
                              f"inputs; this dataset has {task.num_classes} classes of {list(task.input_shape)}: "
                              f"train a policy on it (leave `policy` empty)")
        _, p_split = self._splits(task, cfg)
        if extra.get("heldout") is not None and p_split.fingerprint() != extra["heldout"]:
            raise ConfigError(f"{label}: the task's held-out images differ from that search's "
                              f"({len(p_split)} images here, {extra['heldout']['images']} there), so its "
                              f"supernet may have trained on them: use the search's dataset")
        return cfg, state

    @staticmethod
    def _check_policy_type(meta: dict[str, Any], policy_type: str | None, where: str) -> str:
        saved = meta.get("policy_type", "gcn")
        want = policy_type or saved
        if want not in (saved, "random"):
            raise ConfigError(f"the policy in {where} is a {saved!r} policy, not {want!r}: set policy_type={saved} "
                              f"(or policy_type=random for random transforms on its supernet)")
        return want

    @staticmethod
    def _check_fits(meta: dict[str, Any], pair: CellPair, where: str) -> None:
        if pair.normal.num_nodes != meta["steps"]:
            raise ConfigError(f"input_arch has {pair.normal.num_nodes}-node cells; the policy in {where} was "
                              f"trained with {meta['steps']}-node cells: train a policy for it")
        unknown = sorted({op for c in pair.cells() for op in c.ops
                          if canonical_op(op) != NULL_OP and op not in meta["primitives"]})
        if unknown:
            raise ConfigError(f"input_arch uses op(s) {', '.join(unknown)} that the policy in {where} never saw "
                              f"(its ops: {', '.join(meta['primitives'])}): train a policy with ops including them")

    def _load_policy(self, where: str | Path, task: Task, device: torch.device, policy_type: str | None = None
                     ) -> _Parts:
        """The supernet and policy of the finished search in `where`; `policy_type="random"` keeps its
        supernet only."""
        cfg, state = self._source(where, task)
        meta = state["extra"]["meta"]
        want = self._check_policy_type(meta, policy_type, str(where))
        c_in = meta["input_shape"][0]
        supernet = DartsSupernet(meta["C"], meta["num_classes"], meta["layers"], meta["primitives"],
                                 steps=meta["steps"], multiplier=meta["steps"], input_channels=c_in)
        supernet.load_state_dict(state["model"]["supernet"])
        policy = build_policy(want, [NULL_OP, *meta["primitives"]], meta["policy_embed"], meta["policy_features"],
                              meta["policy_hidden"], meta["policy_dropout"], meta["steps"] + 2)
        if want == meta.get("policy_type", "gcn"):
            policy.load_state_dict(state["model"]["policy"])
        meta = {**meta, "policy_type": want}
        return _Parts(supernet.to(device), policy.to(device), tuple(meta["primitives"]), meta["steps"], meta, cfg)

    # ---- architectures through the supernet ------------------------------------------------------------
    def _choice(self, cell: Cell, index: dict[str, int]) -> list[list[tuple[int, int, None]]]:
        nodes: list[list[tuple[int, int, None]]] = []
        for t in range(cell.num_nodes):
            nodes.append([(src, index[op], None) for op, src in
                          zip(cell.ops[2 * t:2 * t + 2], cell.inputs[2 * t:2 * t + 2], strict=True)
                          if canonical_op(op) != NULL_OP])
        return nodes

    def _transformed_choice(self, parts: _Parts, alpha: TransformedPair, index: dict[str, int]) -> list[Any]:
        """The sparse-forward choices of alpha without reading its actions: per edge of beta its op scaled
        by the gate "keep" and (where the mask allows it) the skip scaled by "skip", both times the
        liveness of the edge's source. A null edge gets gates 0, and a node whose edges are all null (or
        read dead nodes) is dead, as the sparse forward of the transformed cells has it."""
        skip = index[SKIP_OP]
        acts = alpha.actions
        gates = (acts.unsqueeze(-1) == torch.arange(3, device=acts.device)).to(parts.supernet.classifier.weight.dtype)
        out: list[Any] = []
        for c, cell in enumerate(alpha.beta.cells()):
            keep, to_skip, live = gates[c, :, KEEP], gates[c, :, SKIP], 1.0 - gates[c, :, NULL]
            alive: list[torch.Tensor | None] = [None, None]  # the cell inputs are always live
            nodes: list[list[tuple[int, int, torch.Tensor]]] = []
            for t in range(cell.num_nodes):
                entries: list[tuple[int, int, torch.Tensor]] = []
                node_live: torch.Tensor | None = None
                for e in (2 * t, 2 * t + 1):
                    j, k, src = cell.inputs[e], index[cell.ops[e]], alive[cell.inputs[e]]
                    entries.append((j, k, keep[e] if src is None else keep[e] * src))
                    if alpha.skip_ok[c][e] and k != skip:
                        entries.append((j, skip, to_skip[e] if src is None else to_skip[e] * src))
                    edge_live = live[e] if src is None else live[e] * src
                    node_live = edge_live if node_live is None else node_live + edge_live
                alive.append(node_live.clamp(max=1.0))
                nodes.append(entries)
            out.append(nodes)
        return out

    def _plan(self, parts: _Parts, arch: CellPair | TransformedPair) -> tuple[Any, Any, Any, Any]:
        """(normal, reduce, normal_concat, reduce_concat) for `DartsSupernet.forward_sparse`."""
        index = {op: k for k, op in enumerate(parts.primitives)}
        if isinstance(arch, TransformedPair):
            normal, reduce = self._transformed_choice(parts, arch, index)
            beta = arch.beta
            return normal, reduce, beta.normal.concat, beta.reduce.concat
        return self._choice(arch.normal, index), self._choice(arch.reduce, index), arch.normal.concat, \
            arch.reduce.concat

    def _forward(self, parts: _Parts, x: torch.Tensor, arch: CellPair | TransformedPair) -> torch.Tensor:
        return parts.supernet.forward_sparse(x, *self._plan(parts, arch))

    def _batch_accuracy(self, parts: _Parts, x: torch.Tensor, y: torch.Tensor,
                        arch: CellPair | TransformedPair) -> torch.Tensor:
        """Top-1 accuracy (a 0-d tensor on the device) of `arch` on one batch with the shared weights."""
        return (self._forward(parts, x, arch).argmax(-1) == y).float().mean()

    def _sample_inputs(self, parts: _Parts, generator: torch.Generator | None = None) -> CellPair:
        """beta ~ p(.): the uniform prior, normal and reduction cell drawn apart (on the host)."""
        real = list(parts.primitives)
        return CellPair(random_cell(generator, real, parts.steps), random_cell(generator, real, parts.steps))

    def _masks(self, pair: CellPair, costs: tuple[EdgeCosts, EdgeCosts], rules: str = "paper",
               prune_dead: bool = True) -> torch.Tensor:
        return torch.stack([transition_mask(pair.normal, False, costs[0], rules, prune_dead),
                            transition_mask(pair.reduce, True, costs[1], rules, prune_dead)])

    def _input_probs(self, parts: _Parts, pair: CellPair, masks: torch.Tensor) -> torch.Tensor:
        """The policy's action probabilities on the input cells (the search log's view of the policy)."""
        with torch.no_grad():
            return parts.policy.distribution(list(pair.cells()), masks).cpu()

    # ---- the per-epoch plans (outside the steps: host reads are fine here) ------------------------------
    def _w_plan(self, parts: _Parts, steps: int, w_gen: torch.Generator, p_gen: torch.Generator,
                masks_of: _PriorMasks, with_alpha: bool) -> list[tuple[CellPair, CellPair | None]]:
        """beta of each w step, from w's own stream; with `train_on_transforms` also alpha ~ pi(.|beta),
        all drawn at once (the policy does not change during the w phase)."""
        betas = [self._sample_inputs(parts, w_gen) for _ in range(steps)]
        if not with_alpha or not betas:
            return [(b, None) for b in betas]
        ops, inputs = parts.policy.encode([c for b in betas for c in b.cells()])
        e = ops.shape[-1]
        masks = masks_of(ops.cpu().view(steps, 2, e), inputs.cpu().view(steps, 2, e)).view(2 * steps, e, 3)
        with torch.no_grad():
            acts = parts.policy.act(ops, inputs, masks.to(ops.device), generator=p_gen).actions
        rows = acts.view(steps, 2, e).tolist()
        return [(b, CellPair(apply_actions(b.normal, a[0]), apply_actions(b.reduce, a[1])))
                for b, a in zip(betas, rows, strict=True)]

    def _policy_plan(self, parts: _Parts, steps: int, b_gen: torch.Generator, masks_of: _PriorMasks
                     ) -> tuple[list[CellPair], list[Any], torch.Tensor, torch.Tensor, torch.Tensor]:
        """beta of each policy step (the uniform prior does not depend on the policy): as cells (host),
        where each edge may become a skip (host), and as vocab ops, inputs and masks (steps, 2, E[, 3])."""
        e = 2 * parts.steps
        ops, inputs = sample_prior(2 * steps, parts.steps, len(parts.primitives), b_gen)
        ops, inputs = ops.view(steps, 2, e), inputs.view(steps, 2, e)
        vocab = ops + 1  # the policy's vocabulary is [null, *primitives]
        masks = masks_of(vocab, inputs)
        betas = [CellPair(*(Cell(tuple(parts.primitives[k] for k in o), tuple(src))
                            for o, src in zip(orow, irow, strict=True)))
                 for orow, irow in zip(ops.tolist(), inputs.tolist(), strict=True)]
        return betas, masks[..., SKIP].tolist(), vocab, inputs, masks

    # ---- the steps (no host sync in here) ------------------------------------------------------------
    def _w_step(self, net: nn.Module, parts: _Parts, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
                config: NATConfig, beta: CellPair, alpha: CellPair | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of the shared weights on CE(beta) (plus CE(alpha) with `train_on_transforms`),
        through `net` (the supernet, in DDP under torchrun). Returns the loss and beta's logits."""
        plans = [self._plan(parts, beta)] + ([self._plan(parts, alpha)] if alpha is not None else [])
        logits = net(x, *plans)
        loss = sum(F.cross_entropy(out, y) for out in logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(parts.supernet.parameters(), config.grad_clip)
        opt.step()
        return loss.detach(), logits[0].detach()

    def _policy_step(self, ctx: SearchContext, parts: _Parts, batches: list[tuple[torch.Tensor, torch.Tensor]],
                     opt: torch.optim.Optimizer, baseline: torch.Tensor, config: NATConfig,
                     generator: torch.Generator, beta: CellPair, skip_ok: Sequence[Sequence[bool]],
                     ops: torch.Tensor, inputs: torch.Tensor, masks: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """One REINFORCE step: K = `policy_samples` transforms alpha_k ~ pi(.|beta) (rank 0's actions),
        r_k = acc(alpha_k) - acc(beta) on `batches` (averaged over ranks), the policy's gradients averaged
        over ranks. K = 1: the moving baseline; K > 1: leave-one-out baselines (the moving one only logged).

        Returns the next baseline and (mean reward, acc(beta), mean acc(alpha), entropy) as one device tensor."""
        k = config.policy_samples
        out = parts.policy.act(ops.repeat(k, 1), inputs.repeat(k, 1), masks.repeat(k, 1, 1),
                               generator=generator, agree=ctx.broadcast_)
        alphas = [TransformedPair(beta, a, skip_ok) for a in out.actions.view(k, *ops.shape).unbind(0)]
        with torch.no_grad():
            acc = torch.stack([torch.stack([self._batch_accuracy(parts, x, y, arch) for arch in (beta, *alphas)])
                               for x, y in batches]).mean(0)  # (1 + K,): beta, then each alpha
            acc = ctx.all_reduce_(acc, "mean")
        rewards = acc[1:] - acc[0]
        reward = rewards.mean()
        entropy = out.entropy.view(k, -1)[0]  # the same policy on the same beta: equal for every sample
        coeffs = (config.entropy_normal, config.entropy_reduce)
        if k == 1:
            loss, baseline = reinforce_step(out.log_prob, entropy, reward, baseline, coeffs, config.baseline_decay)
        else:
            loss = leave_one_out_step(out.log_prob.view(k, -1), entropy, rewards, coeffs)
            baseline = moving_baseline(baseline, reward, config.baseline_decay)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.all_reduce_grads(parts.policy.parameters())
        opt.step()
        return baseline, torch.stack([reward, acc[0], acc[1:].mean(), entropy.sum().detach()])

    # ---- training ------------------------------------------------------------------------------------
    def _train(self, task: Task, config: NATConfig, run: Run, ctx: SearchContext, parts: _Parts, w_split: Any,
               p_split: Any, costs: tuple[EdgeCosts, EdgeCosts], pair: CellPair) -> dict[str, Any]:
        device = task.device
        supernet, policy = parts.supernet, parts.policy
        net = ctx.wrap(_SparseForward(supernet))
        ctx.broadcast_params_(policy.parameters())
        w_opt = torch.optim.SGD(supernet.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, max(1, config.epochs), eta_min=config.lr_min)
        # fused: Adam's step count stays on the device (the unfused CPU Adam reads it with .item())
        p_opt = torch.optim.Adam(policy.parameters(), lr=config.policy_lr, betas=tuple(config.policy_betas),
                                 weight_decay=config.policy_weight_decay,
                                 fused=device.type in ("cpu", "cuda") or None) if policy.trainable else None
        baseline = torch.zeros((), device=device)
        seed = task.seed * 1_000_003
        w_gen = torch.Generator().manual_seed(seed + _W_STREAM)
        b_gen = torch.Generator().manual_seed(seed + _BETA_STREAM)
        p_gen = torch.Generator(device=device).manual_seed(seed + _POLICY_STREAM)
        masks_of = _PriorMasks(list(policy.ops), costs, torch.device("cpu"))
        input_masks = self._masks(pair, costs, config.transition_rules, config.net_prune_dead)
        init_probs = self._input_probs(parts, pair, input_masks)
        models = {"supernet": supernet, "policy": policy}
        optimizers = {"w": w_opt, **({"policy": p_opt} if p_opt is not None else {})}
        schedulers = {"w": sched}
        metrics: dict[str, Any] = {}
        start = 0
        got = run.resume(model=models, optimizers=optimizers, schedulers=schedulers, map_location=device)
        if got is not None:
            ex = got.extra
            baseline = ex["baseline"].to(device)
            w_gen.set_state(ex["w_gen"])
            b_gen.set_state(ex["b_gen"])
            p_gen.set_state(ex["p_gen"])
            init_probs, metrics, start = ex["init_probs"], dict(ex.get("metrics") or {}), got.epoch
        batch = ctx.per_rank_batch(config.batch_size)  # batch_size is the global batch
        w_loader = ctx.loader(w_split, batch, train=True, augment=config.augment, seed=task.seed)
        p_loader = ctx.loader(p_split, batch, train=True, augment=False, seed=task.seed + 1)
        choice = input_masks.sum(-1) > 1  # edges of the input with a choice
        heldout = p_split.fingerprint()
        for epoch in range(start, config.epochs):
            w_loader.set_epoch(epoch)
            p_loader.set_epoch(epoch)
            # -- w: CE of beta on the 40% split
            supernet.train()
            w_plan = ctx.decide(self._w_plan, parts, len(w_loader), w_gen, p_gen, masks_of,
                                config.train_on_transforms)
            w_acc = Accumulator(device)  # w's loss and top-1 on the sampled inputs, summed on the device
            batches = self._progress(run, w_loader, f"nat w {epoch + 1}/{config.epochs}")
            for (x, y), (beta, alpha) in zip(batches, w_plan, strict=True):
                with ctx.step():
                    loss, logits = self._w_step(net, parts, x, y, w_opt, config, beta, alpha)
                    w_acc.add_batch(logits, y, loss=loss)
            sched.step()
            ctx.sync_buffers(supernet)  # every rank scores with rank 0's BN statistics
            # -- theta: REINFORCE on the 60% split, after the supernet's warm-up
            p_sums = torch.zeros(4, device=device)  # reward, acc(beta), acc(alpha), entropy
            n_p = 0
            if p_opt is not None and epoch >= config.warmup_epochs:
                n_steps = -(-len(p_loader) // config.reward_batches)
                betas, skip_ok, ops, inputs, masks = ctx.decide(self._policy_plan, parts, n_steps, b_gen, masks_of)
                ops, inputs, masks = ops.to(device), inputs.to(device), masks.to(device)
                policy.train()
                batches = self._progress(run, p_loader, f"nat policy {epoch + 1}/{config.epochs}")
                with self._reward_scoring(supernet, config.score_bn):
                    for i, group in enumerate(_groups(batches, config.reward_batches)):
                        with ctx.step():
                            baseline, stats = self._policy_step(ctx, parts, group, p_opt, baseline, config, p_gen,
                                                                betas[i], skip_ok[i], ops[i], inputs[i], masks[i])
                            p_sums += stats
                        n_p += 1
            # -- the epoch's record (host reads are fine here, outside the steps)
            probs = self._input_probs(parts, pair, input_masks)
            w = w_acc.compute(reduce_ranks=ctx.distributed)
            s = (p_sums / max(1, n_p)).tolist()
            metrics = {"train/loss": w["loss"], "train/top1": w["top1"],
                       "train/lr": sched.get_last_lr()[0], "search/policy_steps": n_p, "search/reward": s[0],
                       "search/top1_beta": s[1], "search/top1_alpha": s[2], "search/entropy": s[3],
                       "search/baseline": baseline.item(),
                       "search/keep_prob": probs[..., KEEP][choice].mean().item() if choice.any() else 1.0,
                       "search/prob_shift": (probs - init_probs).abs().max().item()}
            run.log(epoch + 1, **metrics)
            if ctx.is_main:
                log.info(log_line(epoch + 1, config.epochs, metrics, task.num_classes))
            run.save_state(epoch + 1, model=models, optimizers=optimizers, schedulers=schedulers,
                           extra={"baseline": baseline.detach().cpu(), "w_gen": w_gen.get_state(),
                                  "b_gen": b_gen.get_state(), "p_gen": p_gen.get_state(),
                                  "init_probs": init_probs, "metrics": metrics, "meta": parts.meta,
                                  "heldout": heldout})
        return metrics

    @staticmethod
    def _reward_scoring(supernet: nn.Module, score_bn: str) -> Any:
        """How the supernet normalises in the policy steps: the batch's statistics (also under
        "recalibrate": re-estimating per step would double every reward's cost), or eval mode."""
        if score_bn != "running":
            return batch_statistics(supernet)
        return _eval_mode(supernet)

    @staticmethod
    def _progress(run: Run | None, loader: Any, desc: str) -> Any:
        return run.progress(loader, desc=desc, total=len(loader)) if run is not None else loader

    # ---- inference -----------------------------------------------------------------------------------
    def _accuracies(self, parts: _Parts, pairs: list[CellPair], split: Any, config: NATConfig, task: Task,
                    run: Run | None = None, calibration: Any = None) -> list[float]:
        """Held-out top-1 accuracy of each cell pair with the shared weights, through nas_common's
        one-shot scoring (no grad, sums on the device, one host read; BN per `score_bn`, re-estimated on
        `calibration` for "recalibrate"). The supernet is left as it was."""
        unique = list(dict.fromkeys(pairs))
        bn = _SCORE_BN[config.score_bn]
        loader = make_loader(split, config.eval_batch_size, train=False, device=task.device, distributed=False)
        calib: list[Any] = []
        if bn == "recalibrate":
            if calibration is None:
                raise ValueError("score_bn='recalibrate' needs the calibration split (w's part)")
            calib = list(_Batches(make_loader(calibration, config.eval_batch_size, train=False, device=task.device,
                                              distributed=False), config.recalibrate_batches))
        net = parts.supernet
        was, saved = net.training, [b.detach().clone() for b in net.buffers()]
        try:
            scores = score_candidates(unique, lambda cands, x: torch.cat([self._forward(parts, x, c) for c in cands]),
                                      _Batches(loader, config.max_eval_batches), model=net, calibration=calib,
                                      group=1 if bn == "recalibrate" else len(unique), bn=bn)
        finally:
            with torch.no_grad():
                for b, v in zip(net.buffers(), saved, strict=True):
                    b.copy_(v)
            net.train(was)
        by_pair = {p: top1 for p, (top1, _) in zip(unique, scores, strict=True)}
        return [by_pair[p] for p in pairs]

    def _candidates(self, parts: _Parts, pair: CellPair, masks: torch.Tensor, config: NATConfig,
                    task: Task) -> list[CellPair]:
        """The transforms to score: `num_samples` draws from the policy, or its most probable one."""
        parts.policy.eval()
        n = 1 if config.inference == "greedy" else config.num_samples
        gen = torch.Generator(device=task.device).manual_seed(task.seed * 1_000_003 + _INFERENCE_STREAM)
        ops, inputs = parts.policy.encode(list(pair.cells()))
        with torch.no_grad():
            out = parts.policy.act(ops.repeat(n, 1), inputs.repeat(n, 1), masks.to(task.device).repeat(n, 1, 1),
                                   generator=gen, greedy=config.inference == "greedy")
        acts = out.actions.cpu().view(n, 2, -1)
        return [CellPair(apply_actions(pair.normal, a[0]), apply_actions(pair.reduce, a[1])) for a in acts]

    def _choose(self, task: Task, config: NATConfig, parts: _Parts, pair: CellPair, w_split: Any, p_split: Any,
                costs: tuple[EdgeCosts, EdgeCosts]) -> dict[str, Any]:
        """Sample the transforms, score them (and the input) on the held-out split, keep the best."""
        masks = self._masks(pair, costs, config.transition_rules, config.net_prune_dead)
        candidates = self._candidates(parts, pair, masks, config, task)
        accs = self._accuracies(parts, [pair, *candidates], p_split, config, task, calibration=w_split)
        acc_input, cand_accs = accs[0], accs[1:]
        # the pool to choose from: the transforms, then (optionally) the input itself, so that on a tie
        # the transform (never costlier) wins
        pool = candidates + ([pair] if config.input_as_candidate else [])
        scores = cand_accs + ([acc_input] if config.input_as_candidate else [])
        best = min(range(len(pool)), key=lambda k: (-scores[k], k))
        best_t = max(range(len(candidates)), key=lambda k: (cand_accs[k], -k))
        return {"output_spec": pool[best].to_spec(), "candidates": [c.to_spec() for c in candidates],
                "candidate_acc": cand_accs, "input_acc": acc_input, "chosen_is_input": best >= len(candidates),
                "best_transform_spec": candidates[best_t].to_spec(), "best_acc": scores[best],
                "best_transform_acc": cand_accs[best_t]}

    def _transform(self, task: Task, config: NATConfig, run: Run, ctx: SearchContext, parts: _Parts,
                   pair: CellPair, input_arch: Arch, w_split: Any, p_split: Any, costs: tuple[EdgeCosts, EdgeCosts],
                   metrics: dict[str, Any]) -> SearchResult:
        got = ctx.decide(self._choose, task, config, parts, pair, w_split, p_split, costs)
        state = {
            "input_spec": pair.to_spec(), "output_spec": got["output_spec"], "net": self._net(config, task),
            "input_arch": config.input_arch, "policy_from": str(config.policy) if config.policy else "",
            "policy_type": parts.meta.get("policy_type", config.policy_type), "inference": config.inference,
            "candidates": got["candidates"], "candidate_acc": got["candidate_acc"], "input_acc": got["input_acc"],
            "chosen_is_input": got["chosen_is_input"], "best_transform_spec": got["best_transform_spec"],
        }
        final = {"search/top1_input": got["input_acc"], "search/top1_best": got["best_acc"],
                 "search/top1_best_transform": got["best_transform_acc"]}
        run.log(config.epochs + 1 if not config.policy else 1, **final)
        metrics = {**metrics, **final, "search/candidate_top1": got["candidate_acc"],
                   "search/chosen_is_input": got["chosen_is_input"]}
        return SearchResult(method=self.name, state=state, metrics=metrics, config=config.to_dict())

    @staticmethod
    def _net(config: NATConfig, task: Task) -> dict[str, Any]:
        c, h, w = task.input_shape
        size = [config.net_input_size] * 2 if config.net_input_size else [h, w]
        net = {"C": config.net_C, "layers": config.net_layers, "auxiliary": config.net_auxiliary,
               "num_classes": config.net_num_classes or task.num_classes, "input": [c, *size]}
        if config.net_stem != "cifar":
            net["stem"] = config.net_stem
        if not config.net_prune_dead:
            net["prune_dead"] = False
        return net

    # ---- scoring with a finished search's weights --------------------------------------------------------
    def score_archs(self, run_dir: str | Path, task: Task, archs: list[Arch], split: Any = None) -> list[float]:
        """Top-1 accuracy of `darts` archs under the shared weights of the search in `run_dir`, on `split`
        (default: the task's test split), BN as the search scored (the benchmark's held-out check)."""
        parts = self._load_policy(str(run_dir), task, task.device)
        config = parts.source.replace(max_eval_batches=0)
        pairs = [CellPair.from_spec(a.spec) for a in archs]
        w_split, _ = self._splits(task, config)
        return self._accuracies(parts, pairs, task.dataset.test if split is None else split, config, task,
                                calibration=w_split)

    # ---- the harness's ranking hook ---------------------------------------------------------------------
    def sample_and_score(self, run_dir: str | Path, task: Task, n: int, seed: int) -> list[tuple[Arch, float]]:
        """`n` architectures from NAT's uniform prior with their held-out accuracy under the shared weights
        of a finished search in `run_dir` (for Kendall's tau between supernet and stand-alone accuracy)."""
        parts = self._load_policy(str(run_dir), task, task.device)
        config = parts.source
        gen = torch.Generator().manual_seed(seed)
        pairs = [CellPair(random_cell(gen, parts.primitives, parts.steps),
                          random_cell(gen, parts.primitives, parts.steps)) for _ in range(n)]
        w_split, p_split = self._splits(task, config)
        accs = self._accuracies(parts, pairs, p_split, config, task, calibration=w_split)
        net = self._net(config, task)
        return [(Arch("darts", pair.to_spec(), net), acc) for pair, acc in zip(pairs, accs, strict=True)]

    # ---- derive ----------------------------------------------------------------------------------------
    def derive(self, result: SearchResult) -> Arch:
        """The best transform as a `darts` Arch, with its costs and its input's ("input_macs", ...).

        Raises NASError if the output costs more than the input (the masks make that impossible)."""
        st = result.state
        net = st["net"]
        out = Arch("darts", st["output_spec"], net).with_costs()
        inp = Arch("darts", st["input_spec"], net).with_costs()
        for k in ("macs", "params"):
            if out.costs[k] > inp.costs[k]:
                raise NASError(f"NAT produced an architecture with more {k} ({out.costs[k]:.4g}) than its input "
                               f"({inp.costs[k]:.4g}): a bug in the transition masks, please report it")
        costs = {**out.costs, "input_macs": inp.costs["macs"], "input_params": inp.costs["params"]}
        prov = {"input_arch": st["input_arch"], "input_spec": st["input_spec"]}
        if st.get("policy_from"):
            prov["policy"] = st["policy_from"]
        return Arch("darts", out.spec, net, costs, method=self.name, provenance=prov)


def log_line(epoch: int, epochs: int, m: dict[str, Any], num_classes: int = 10) -> str:
    """One line of the search log: the supernet (w's loss and accuracy on the sampled inputs, against
    chance) and the policy (reward, held-out accuracy of beta and alpha, the keep probability on the
    input's free edges, its largest move since the start)."""
    policy = (f"reward {m['search/reward']:+.4f}  held-out acc beta {m['search/top1_beta']:.3f} "
              f"alpha {m['search/top1_alpha']:.3f}" if m["search/policy_steps"] else "policy: supernet warm-up")
    return (f"nat epoch {epoch:3d}/{epochs}  w loss {m['train/loss']:.3f} acc {m['train/top1']:.3f} (chance "
            f"{1 / num_classes:.3f})  {policy}  P(keep) {m['search/keep_prob']:.3f}  "
            f"prob shift {m['search/prob_shift']:.3f}")
