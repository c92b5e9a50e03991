"""NAT as a nas_common search method: `NATSearch` (name "nat") and `NATConfig`.

One search = (1) train the shared supernet and the policy, epoch by epoch, (2) transform the input
architecture: sample `num_samples` transformations from the policy (or take its most probable one,
`inference="greedy"`, the paper's Maximum-GCN) and keep the one with the best held-out accuracy under
the shared weights. With `policy=RUN_DIR` step (1) is skipped: the policy and supernet saved by an
earlier run (RUN_DIR/policy.pt) transform a new `input_arch` without training.

Per epoch (the official code's `train_search.py`; the paper's Algorithm 1 could not be retrieved here,
see the README):

* weights w on the first 40% of the training split: per batch sample an input beta ~ p(.) (uniform,
  normal and reduction cell apart) and take one SGD step on CE(beta). `train_on_transforms=true` also
  trains on the policy's transform alpha ~ pi(.|beta), CE(beta) + CE(alpha) (not the official code).
* policy theta on the other 60%, from epoch `warmup_epochs` on: per step beta ~ p(.), alpha ~
  pi(.|beta); reward r = acc(alpha) - acc(beta) with the shared weights on the same held-out images
  (`reward_batches` batches, averaged; BN with batch statistics, no grad); loss = -(log pi_n +
  log pi_r)(r - b) - 0.003 H_n - 0.003 H_r; Adam. The baseline tracks the reward, b <- 0.99 b + 0.01 r
  (the official code feeds r - b back into it: a bug we fix).

The w steps draw beta from their own generator and never read the policy (unless
`train_on_transforms`), so two searches with the same seed and different `policy_type` train the
same supernet bit for bit: the paper's baselines compare on one supernet. The policy step's one host
sync is reading the sampled cells back (the sparse supernet runs only the chosen ops, so it needs
them on the host); beta is drawn, and the masks are looked up, on the device.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from nas_common.arch import Arch, get_arch
from nas_common.config import Config, resolve_config
from nas_common.costs.tables import op_costs
from nas_common.data import make_loader
from nas_common.errors import ArchFileError, ConfigError, NASError, RunError
from nas_common.methods import CliOption, SearchMethod, SearchResult, Task
from nas_common.runs import Run, atomic_torch_save
from nas_common.spaces.darts import GENOTYPES, DartsSupernet, genotype_to_spec, reduction_layers

from .cells import NULL_OP, Cell, CellPair, canonical_op, random_cell, sample_prior
from .policy import POLICIES, TransformPolicy, build_policy
from .transitions import KEEP, apply_actions, prior_mask_table, transition_mask

POLICY_FILE = "policy.pt"
POLICY_FORMAT = "nat-policy/1"

#: the official code's "fully concat" op set (DARTS' ops + conv_3x3; null is NAT's N, never run)
FULLY_CONCAT_OPS: tuple[str, ...] = (
    "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
    "dil_conv_5x5", "conv_3x3",
)

#: seeds of the search's own random streams, offset from the task seed
_W_STREAM, _POLICY_STREAM, _INFERENCE_STREAM = 11, 13, 17


@dataclass(frozen=True)
class NATConfig(Config):
    """NAT's settings; the defaults are the paper's (official code) values for CIFAR-10."""

    # what to transform, and with which policy
    input_arch: str = "darts-v2"  # a genotype name (darts-v2, enas, resnet-block, vgg-block, ...) or an arch.json
    policy: str = ""  # a run directory (or policy.pt) of an earlier NAT search: transform without training
    policy_type: str = "gcn"  # gcn (NAT), lstm (the paper's LSTM baseline), random (its random search)
    # the supernet and its weights w
    C: int = 20
    layers: int = 8
    ops: tuple[str, ...] = FULLY_CONCAT_OPS
    epochs: int = 100
    batch_size: int = 64
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
    # paper: O->{O,S,N}, S->{S,N}, N->{N}; published: also N->S where the built network gets no costlier
    transition_rules: Literal["paper", "published"] = "paper"
    # scoring (rewards and candidates), no grad: BN with the batch's statistics, leaving the running ones
    # untouched ("batch", as the official train-mode scoring), or with the running statistics ("running")
    score_bn: Literal["batch", "running"] = "batch"
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
            (self.max_eval_batches >= 0, "max_eval_batches must be >= 0 (0 = all)"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.reward_batches >= 1, "reward_batches must be >= 1"),
            (self.net_C >= 1 and self.net_layers >= 1, "net_C and net_layers must be positive"),
            (self.net_input_size >= 0 and self.net_num_classes >= 0,
             "net_input_size and net_num_classes must be >= 0 (0 = the dataset's)"),
            (self.policy_type in POLICIES, f"policy_type {self.policy_type!r} is unknown: valid: "
                                           f"{', '.join(POLICIES.names())}"),
            (len(self.ops) > 0 and all(canonical_op(o) != NULL_OP for o in self.ops),
             "ops must list the supernet's real ops (null is implied)"),
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


@contextlib.contextmanager
def scoring_mode(model: torch.nn.Module, bn: str = "batch") -> Iterator[None]:
    """Score architectures under shared weights, no grad: BN with batch statistics while leaving the
    running ones untouched (train mode with BN momentum 0), or with running statistics (eval mode)."""
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in bns]
    try:
        if bn == "batch":
            model.train()
            for m in bns:
                m.momentum = 0.0
        else:
            model.eval()
        with torch.no_grad():
            yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)


def reinforce_step(log_prob: torch.Tensor, entropy: torch.Tensor, reward: torch.Tensor, baseline: torch.Tensor,
                   entropy_coeffs: tuple[float, float], decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NAT's policy loss and the next baseline.

    loss = -(sum of log pi over the cells) * (r - b) - sum_c coeff_c * H_c, with `log_prob` and `entropy`
    per cell type (normal, reduce). The baseline is a moving average of the reward, b <- decay * b +
    (1 - decay) * r (the official code averages r - b instead, so its b settles at half the reward).
    """
    bonus = sum(c * h for c, h in zip(entropy_coeffs, entropy.unbind(0), strict=True))
    loss = -log_prob.sum() * (reward - baseline).detach() - bonus
    return loss, (decay * baseline + (1.0 - decay) * reward).detach()


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


# ---- the method --------------------------------------------------------------------------------------

@dataclass
class _Parts:
    supernet: DartsSupernet
    policy: TransformPolicy
    primitives: tuple[str, ...]
    steps: int
    meta: dict[str, Any] = field(default_factory=dict)


class _PriorMasks:
    """The masks of prior samples, looked up on the device: `allowed[cell type, vocab op, stride index]`."""

    def __init__(self, vocab: list[str], costs: tuple[EdgeCosts, EdgeCosts], device: torch.device) -> None:
        self.allowed = torch.stack([prior_mask_table(vocab, c) for c in costs]).to(device)  # (2, V, 2, 3)
        self.cell_type = torch.arange(2, device=device).unsqueeze(1)  # row 0 normal, row 1 reduce

    def __call__(self, ops: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        stride2 = ((self.cell_type == 1) & (inputs < 2)).long()
        return self.allowed[self.cell_type, ops, stride2]


class NATSearch(SearchMethod):
    """Neural Architecture Transformer (Guo et al., NeurIPS 2019) on the DARTS cell space."""

    name: ClassVar[str] = "nat"
    spaces = ("darts",)
    cli_options = (
        CliOption("--input-arch", key="input_arch", metavar="ARCH",
                  help="the architecture to transform: a genotype name or an arch.json (= -o input_arch=ARCH)"),
        CliOption("--policy", key="policy", metavar="RUN_DIR",
                  help="reuse the trained policy of an earlier run (= -o policy=RUN_DIR)"),
    )
    config_cls: ClassVar[type] = NATConfig

    # ---- search ------------------------------------------------------------------------------------
    def search(self, task: Task, config: NATConfig, run: Run) -> SearchResult:
        device = task.device
        input_arch = resolve_input_arch(config.input_arch)
        pair = CellPair.from_spec(input_arch.spec)
        steps = pair.normal.num_nodes
        if pair.reduce.num_nodes != steps:
            raise ConfigError(f"input_arch: the normal cell has {steps} nodes and the reduction cell "
                              f"{pair.reduce.num_nodes}; NAT's supernet needs the same number in both")
        w_split, p_split = task.dataset.train.split(config.weight_fraction, seed=config.split_seed)
        costs = self._edge_costs(config, task)

        if config.policy:
            parts = self._load_policy(config.policy, task, device, config.policy_type)
            self._check_fits(parts, pair, config.policy)
            metrics: dict[str, Any] = {"policy_from": str(config.policy)}
        else:
            parts = self._build(config, task, pair, device)
            metrics = self._train(task, config, run, parts, w_split, p_split, costs, pair)
            if run is not None:
                self._save_policy(parts, run.path / POLICY_FILE)

        return self._transform(task, config, run, parts, pair, input_arch, p_split, costs, metrics)

    def _edge_costs(self, config: NATConfig, task: Task) -> tuple[EdgeCosts, EdgeCosts]:
        size = config.net_input_size or min(task.input_shape[1:])
        return (EdgeCosts(config.net_C, config.net_layers, size, False, config.net_stem),
                EdgeCosts(config.net_C, config.net_layers, size, True, config.net_stem))

    # ---- building / saving the supernet and policy ---------------------------------------------------
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

    @staticmethod
    def _save_policy(parts: _Parts, path: Path) -> None:
        from nas_common import dist

        if dist.is_main():
            atomic_torch_save({"format": POLICY_FORMAT, "meta": parts.meta,
                               "policy": {k: v.detach().cpu() for k, v in parts.policy.state_dict().items()},
                               "supernet": {k: v.detach().cpu() for k, v in parts.supernet.state_dict().items()}},
                              path)

    def _load_policy(self, where: str, task: Task, device: torch.device, policy_type: str | None = None) -> _Parts:
        """The supernet and policy of an earlier search; `policy_type="random"` keeps its supernet only."""
        p = Path(where)
        if p.is_dir():
            p = p / POLICY_FILE
        if not p.is_file():
            raise ConfigError(f"policy={where!r}: no {POLICY_FILE} there; give the run directory of a NAT "
                              f"search (`nas search nat --out DIR` writes DIR/{POLICY_FILE})")
        try:
            payload = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:
            raise RunError(f"cannot read {p}: {e}") from None
        if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
            raise RunError(f"{p} is not a NAT policy file ({POLICY_FORMAT})")
        meta = payload["meta"]
        if meta["num_classes"] != task.num_classes or list(meta["input_shape"]) != list(task.input_shape):
            raise ConfigError(f"the policy in {p} was trained for {meta['num_classes']} classes of "
                              f"{meta['input_shape']} inputs; this dataset has {task.num_classes} classes of "
                              f"{list(task.input_shape)}: train a policy on it (leave `policy` empty)")
        saved = meta.get("policy_type", "gcn")
        want = policy_type or saved
        if want not in (saved, "random"):
            raise ConfigError(f"the policy in {p} is a {saved!r} policy, not {want!r}: set policy_type={saved} "
                              f"(or policy_type=random for random transforms on its supernet)")
        c_in = meta["input_shape"][0]
        supernet = DartsSupernet(meta["C"], meta["num_classes"], meta["layers"], meta["primitives"],
                                 steps=meta["steps"], multiplier=meta["steps"], input_channels=c_in)
        supernet.load_state_dict(payload["supernet"])
        policy = build_policy(want, [NULL_OP, *meta["primitives"]], meta["policy_embed"], meta["policy_features"],
                              meta["policy_hidden"], meta["policy_dropout"], meta["steps"] + 2)
        if want == saved:
            policy.load_state_dict(payload["policy"])
        meta = {**meta, "policy_type": want}
        return _Parts(supernet.to(device), policy.to(device), tuple(meta["primitives"]), meta["steps"], meta)

    @staticmethod
    def _check_fits(parts: _Parts, pair: CellPair, where: str) -> None:
        if pair.normal.num_nodes != parts.steps:
            raise ConfigError(f"input_arch has {pair.normal.num_nodes}-node cells; the policy in {where} was "
                              f"trained with {parts.steps}-node cells: train a policy for it")
        unknown = sorted({op for c in pair.cells() for op in c.ops
                          if canonical_op(op) != NULL_OP and op not in parts.primitives})
        if unknown:
            raise ConfigError(f"input_arch uses op(s) {', '.join(unknown)} that the policy in {where} never saw "
                              f"(its ops: {', '.join(parts.primitives)}): train a policy with ops including them")

    # ---- one cell pair through the supernet ------------------------------------------------------------
    def _choice(self, cell: Cell, index: dict[str, int]) -> list[list[tuple[int, int, None]]]:
        nodes: list[list[tuple[int, int, None]]] = []
        for t in range(cell.num_nodes):
            nodes.append([(src, index[op], None) for op, src in
                          zip(cell.ops[2 * t:2 * t + 2], cell.inputs[2 * t:2 * t + 2], strict=True)
                          if canonical_op(op) != NULL_OP])
        return nodes

    def _forward(self, parts: _Parts, x: torch.Tensor, pair: CellPair) -> torch.Tensor:
        index = {op: k for k, op in enumerate(parts.primitives)}
        return parts.supernet.forward_sparse(x, self._choice(pair.normal, index), self._choice(pair.reduce, index),
                                             pair.normal.concat, pair.reduce.concat)

    def _batch_accuracy(self, parts: _Parts, x: torch.Tensor, y: torch.Tensor, pair: CellPair) -> torch.Tensor:
        """Top-1 accuracy (a 0-d tensor on the device) of `pair` on one batch with the shared weights."""
        return (self._forward(parts, x, pair).argmax(-1) == y).float().mean()

    def _sample_inputs(self, parts: _Parts, generator: torch.Generator | None = None) -> CellPair:
        """beta ~ p(.): the uniform prior, normal and reduction cell drawn apart (on the host)."""
        real = list(parts.primitives)
        return CellPair(random_cell(generator, real, parts.steps), random_cell(generator, real, parts.steps))

    def _masks(self, pair: CellPair, costs: tuple[EdgeCosts, EdgeCosts], rules: str = "paper") -> torch.Tensor:
        return torch.stack([transition_mask(pair.normal, False, costs[0], rules),
                            transition_mask(pair.reduce, True, costs[1], rules)])

    def _transform_pair(self, parts: _Parts, pair: CellPair, costs: tuple[EdgeCosts, EdgeCosts], grad: bool,
                        rules: str = "paper", generator: torch.Generator | None = None) -> tuple[CellPair, Any]:
        masks = self._masks(pair, costs, rules)
        with torch.set_grad_enabled(grad):
            out = parts.policy(list(pair.cells()), masks, generator=generator)
        acts = out.actions.cpu()
        return CellPair(apply_actions(pair.normal, acts[0]), apply_actions(pair.reduce, acts[1])), out

    def _pairs_from_host(self, parts: _Parts, host: torch.Tensor) -> tuple[CellPair, CellPair]:
        """(beta, alpha) from the step's host copy: per cell type a row [ops | inputs | actions]."""
        e = 2 * parts.steps
        betas, alphas = [], []
        for row in host.tolist():
            cell = Cell(tuple(parts.primitives[k] for k in row[:e]), tuple(row[e:2 * e]))
            betas.append(cell)
            alphas.append(apply_actions(cell, row[2 * e:]))
        return CellPair(*betas), CellPair(*alphas)

    def _input_probs(self, parts: _Parts, pair: CellPair, masks: torch.Tensor) -> torch.Tensor:
        """The policy's action probabilities on the input cells (the search log's view of the policy)."""
        with torch.no_grad():
            return parts.policy.distribution(list(pair.cells()), masks).cpu()

    # ---- training ------------------------------------------------------------------------------------
    def _w_step(self, parts: _Parts, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
                config: NATConfig, w_gen: torch.Generator, p_gen: torch.Generator,
                costs: tuple[EdgeCosts, EdgeCosts]) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of the shared weights on CE(beta) (and CE(alpha) with `train_on_transforms`)."""
        beta = self._sample_inputs(parts, w_gen)
        logits = self._forward(parts, x, beta)
        loss = F.cross_entropy(logits, y)
        if config.train_on_transforms:  # the option's transform needs the policy's actions on the host
            alpha, _ = self._transform_pair(parts, beta, costs, grad=False, generator=p_gen)
            loss = loss + F.cross_entropy(self._forward(parts, x, alpha), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(parts.supernet.parameters(), config.grad_clip)
        opt.step()
        return loss.detach(), (logits.detach().argmax(-1) == y).sum()

    def _policy_step(self, parts: _Parts, batches: list[tuple[torch.Tensor, torch.Tensor]],
                     opt: torch.optim.Optimizer, baseline: torch.Tensor, config: NATConfig,
                     generator: torch.Generator, masks_of: _PriorMasks) -> tuple[torch.Tensor, torch.Tensor]:
        """One REINFORCE step: beta ~ p, alpha ~ pi(.|beta), r = acc(alpha) - acc(beta) on `batches`.

        Returns the next baseline and (reward, acc(beta), acc(alpha), entropy) as one device tensor."""
        device = baseline.device
        ops, inputs = sample_prior(2, parts.steps, len(parts.primitives), generator, device)
        vocab_ops = ops + 1  # the policy's vocabulary is [null, *primitives]
        out = parts.policy.act(vocab_ops, inputs, masks_of(vocab_ops, inputs), generator=generator)
        host = torch.cat([ops, inputs, out.actions], dim=1).cpu()  # the step's one host sync (see module doc)
        beta, alpha = self._pairs_from_host(parts, host)
        with scoring_mode(parts.supernet, config.score_bn):
            acc_b = torch.stack([self._batch_accuracy(parts, x, y, beta) for x, y in batches]).mean()
            acc_a = acc_b if alpha == beta else torch.stack(
                [self._batch_accuracy(parts, x, y, alpha) for x, y in batches]).mean()
        reward = acc_a - acc_b
        loss, baseline = reinforce_step(out.log_prob, out.entropy, reward, baseline,
                                        (config.entropy_normal, config.entropy_reduce), config.baseline_decay)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return baseline, torch.stack([reward, acc_b, acc_a, out.entropy.sum().detach()])

    def _train(self, task: Task, config: NATConfig, run: Run | None, parts: _Parts, w_split: Any, p_split: Any,
               costs: tuple[EdgeCosts, EdgeCosts], pair: CellPair) -> dict[str, Any]:
        device = task.device
        supernet, policy = parts.supernet, parts.policy
        w_opt = torch.optim.SGD(supernet.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, max(1, config.epochs), eta_min=config.lr_min)
        p_opt = torch.optim.Adam(policy.parameters(), lr=config.policy_lr, betas=tuple(config.policy_betas),
                                 weight_decay=config.policy_weight_decay) if policy.trainable else None
        baseline = torch.zeros((), device=device)
        w_gen = torch.Generator().manual_seed(task.seed * 1_000_003 + _W_STREAM)
        p_gen = torch.Generator(device=device).manual_seed(task.seed * 1_000_003 + _POLICY_STREAM)
        masks_of = _PriorMasks(list(policy.ops), costs, device)
        input_masks = self._masks(pair, costs, config.transition_rules)
        init_probs = self._input_probs(parts, pair, input_masks)
        start = 0
        state = run.restore(map_location=device) if run is not None else None
        if state is not None:
            supernet.load_state_dict(state["supernet"])
            policy.load_state_dict(state["policy"])
            w_opt.load_state_dict(state["w_opt"])
            if p_opt is not None:
                p_opt.load_state_dict(state["p_opt"])
            sched.load_state_dict(state["sched"])
            baseline = state["baseline"].to(device)
            w_gen.set_state(state["w_gen"].cpu())
            p_gen.set_state(state["p_gen"].cpu())
            init_probs = state["init_probs"].cpu()
            start = int(state["epoch"])
        w_loader = make_loader(w_split, config.batch_size, train=True, device=device, augment=config.augment,
                               seed=task.seed)
        p_loader = make_loader(p_split, config.batch_size, train=True, device=device, augment=False,
                               seed=task.seed + 1)
        choice = input_masks.sum(-1) > 1  # edges of the input with a choice
        metrics: dict[str, Any] = {}
        for epoch in range(start, config.epochs):
            w_loader.set_epoch(epoch)
            p_loader.set_epoch(epoch)
            # -- w: CE of beta on the 40% split
            supernet.train()
            w_sums = torch.zeros(2, device=device)  # loss, correct
            n_w = seen = 0
            for x, y in self._progress(run, w_loader, f"nat w {epoch + 1}/{config.epochs}"):
                loss, correct = self._w_step(parts, x, y, w_opt, config, w_gen, p_gen, costs)
                w_sums += torch.stack([loss, correct.float()])
                n_w += 1
                seen += y.shape[0]
            sched.step()
            # -- theta: REINFORCE on the 60% split, after the supernet's warm-up
            p_sums = torch.zeros(4, device=device)  # reward, acc(beta), acc(alpha), entropy
            n_p = 0
            if p_opt is not None and epoch >= config.warmup_epochs:
                policy.train()
                batches = self._progress(run, p_loader, f"nat policy {epoch + 1}/{config.epochs}")
                for group in _groups(batches, config.reward_batches):
                    baseline, stats = self._policy_step(parts, group, p_opt, baseline, config, p_gen, masks_of)
                    p_sums += stats
                    n_p += 1
            # -- the epoch's record (host syncs are fine here, outside the steps)
            probs = self._input_probs(parts, pair, input_masks)
            w = w_sums.tolist()
            s = (p_sums / max(1, n_p)).tolist()
            metrics = {"w_loss": w[0] / max(1, n_w), "w_acc": w[1] / max(1, seen), "policy_steps": n_p,
                       "reward": s[0], "acc_input": s[1], "acc_transformed": s[2], "entropy": s[3],
                       "baseline": baseline.item(), "lr": sched.get_last_lr()[0],
                       "keep_prob": probs[..., KEEP][choice].mean().item() if choice.any() else 1.0,
                       "prob_shift": (probs - init_probs).abs().max().item()}
            if run is not None:
                run.log(epoch + 1, **metrics)
                if run.show_progress:
                    from tqdm.auto import tqdm

                    tqdm.write(log_line(epoch + 1, config.epochs, metrics, task.num_classes))
                run.checkpoint({"supernet": supernet.state_dict(), "policy": policy.state_dict(),
                                "w_opt": w_opt.state_dict(), "p_opt": p_opt.state_dict() if p_opt else None,
                                "sched": sched.state_dict(), "baseline": baseline.detach().cpu(),
                                "w_gen": w_gen.get_state(), "p_gen": p_gen.get_state(), "init_probs": init_probs,
                                "config": config.to_dict()}, epoch + 1)
        return metrics

    @staticmethod
    def _progress(run: Run | None, loader: Any, desc: str) -> Any:
        return run.progress(loader, desc=desc, total=len(loader)) if run is not None else loader

    # ---- inference -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _accuracies(self, parts: _Parts, pairs: list[CellPair], split: Any, config: NATConfig, task: Task,
                    run: Run | None) -> list[float]:
        """Held-out top-1 accuracy of each cell pair with the shared weights (no grad; BN per `score_bn`)."""
        loader = make_loader(split, config.eval_batch_size, train=False, device=task.device)
        unique = list(dict.fromkeys(pairs))
        correct = torch.zeros(len(unique), device=task.device)
        seen = 0
        with scoring_mode(parts.supernet, config.score_bn):
            for b, (x, y) in enumerate(self._progress(run, loader, "nat: scoring transforms")):
                if config.max_eval_batches and b >= config.max_eval_batches:
                    break
                for k, pair in enumerate(unique):
                    correct[k] += (self._forward(parts, x, pair).argmax(-1) == y).sum()
                seen += y.shape[0]
        acc = (correct / max(1, seen)).tolist()
        by_pair = dict(zip(unique, acc, strict=True))
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

    def _transform(self, task: Task, config: NATConfig, run: Run | None, parts: _Parts, pair: CellPair,
                   input_arch: Arch, p_split: Any, costs: tuple[EdgeCosts, EdgeCosts],
                   metrics: dict[str, Any]) -> SearchResult:
        masks = self._masks(pair, costs, config.transition_rules)
        candidates = self._candidates(parts, pair, masks, config, task)
        accs = self._accuracies(parts, [pair, *candidates], p_split, config, task, run)
        acc_input, cand_accs = accs[0], accs[1:]
        # the pool to choose from: the transforms, then (optionally) the input itself, so that on a tie
        # the transform (never costlier) wins
        pool = candidates + ([pair] if config.input_as_candidate else [])
        scores = cand_accs + ([acc_input] if config.input_as_candidate else [])
        order = sorted(range(len(pool)), key=lambda k: (-scores[k], k))
        net = self._net(config, task)
        best = order[0]
        if task.budget.is_set:  # keep the most accurate candidate within the budget, if any
            within = [k for k in order if not task.budget.violations(
                Arch("darts", pool[k].to_spec(), net).with_costs().costs)]
            if within:
                best = within[0]
            else:
                warnings.warn("no NAT transform of the input meets the budget: keeping the most accurate one",
                              stacklevel=2)
        chosen = pool[best]
        best_t = max(range(len(candidates)), key=lambda k: (cand_accs[k], -k))
        state = {
            "input_spec": pair.to_spec(), "output_spec": chosen.to_spec(), "net": net,
            "input_arch": config.input_arch, "policy_from": str(config.policy) if config.policy else "",
            "policy_type": parts.meta.get("policy_type", config.policy_type), "inference": config.inference,
            "candidates": [c.to_spec() for c in candidates], "candidate_acc": cand_accs,
            "input_acc": acc_input, "chosen_is_input": best >= len(candidates),
            "best_transform_spec": candidates[best_t].to_spec(),
        }
        metrics = {**metrics, "input_acc": acc_input, "best_acc": scores[best],
                   "best_transform_acc": cand_accs[best_t], "candidate_acc": cand_accs,
                   "chosen_is_input": state["chosen_is_input"]}
        if run is not None:
            run.log(config.epochs + 1, input_acc=acc_input, best_acc=scores[best],
                    best_transform_acc=cand_accs[best_t])
        return SearchResult(method=self.name, state=state, metrics=metrics, config=config.to_dict())

    @staticmethod
    def _net(config: NATConfig, task: Task) -> dict[str, Any]:
        c, h, w = task.input_shape
        size = [config.net_input_size] * 2 if config.net_input_size else [h, w]
        net = {"C": config.net_C, "layers": config.net_layers, "auxiliary": config.net_auxiliary,
               "num_classes": config.net_num_classes or task.num_classes, "input": [c, *size]}
        if config.net_stem != "cifar":
            net["stem"] = config.net_stem
        return net

    # ---- scoring with a finished search's weights --------------------------------------------------------
    def _saved_config(self, run_dir: str | Path) -> NATConfig:
        import tomllib

        cfg_file = Path(run_dir) / "config.toml"
        saved = tomllib.loads(cfg_file.read_text()).get("config", {}) if cfg_file.is_file() else {}
        return resolve_config(NATConfig, preset=None, file=saved)

    def score_archs(self, run_dir: str | Path, task: Task, archs: list[Arch], split: Any = None) -> list[float]:
        """Top-1 accuracy of `darts` archs under the shared weights of the search in `run_dir`, on `split`
        (default: the task's test split), BN as the search scored (the benchmark's held-out check)."""
        config = self._saved_config(run_dir)
        parts = self._load_policy(str(run_dir), task, task.device)
        pairs = [CellPair.from_spec(a.spec) for a in archs]
        return self._accuracies(parts, pairs, task.dataset.test if split is None else split,
                                config.replace(max_eval_batches=0), task, None)

    # ---- the harness's ranking hook ---------------------------------------------------------------------
    def sample_and_score(self, run_dir: str | Path, task: Task, n: int, seed: int) -> list[tuple[Arch, float]]:
        """`n` architectures from NAT's uniform prior with their held-out accuracy under the shared weights
        of a finished search in `run_dir` (for Kendall's tau between supernet and stand-alone accuracy)."""
        config = self._saved_config(run_dir)
        parts = self._load_policy(str(run_dir), task, task.device)
        gen = torch.Generator().manual_seed(seed)
        pairs = [CellPair(random_cell(gen, parts.primitives, parts.steps),
                          random_cell(gen, parts.primitives, parts.steps)) for _ in range(n)]
        _, p_split = task.dataset.train.split(config.weight_fraction, seed=config.split_seed)
        accs = self._accuracies(parts, pairs, p_split, config, task, None)
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
    """One line of the search log: the supernet (w's loss and accuracy, held-out accuracy of the prior's
    samples) and the policy (reward, the keep probability on the input's free edges, its largest move)."""
    policy = (f"reward {m['reward']:+.4f}  held-out acc beta {m['acc_input']:.3f} alpha {m['acc_transformed']:.3f}"
              if m["policy_steps"] else "policy: supernet warm-up")
    return (f"nat epoch {epoch:3d}/{epochs}  w loss {m['w_loss']:.3f} acc {m['w_acc']:.3f} (chance "
            f"{1 / num_classes:.3f})  {policy}  P(keep) {m['keep_prob']:.3f}  prob shift {m['prob_shift']:.3f}")
