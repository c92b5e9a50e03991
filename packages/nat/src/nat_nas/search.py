"""NAT as a nas_common search method: `NATSearch` (name "nat") and `NATConfig`.

One search = (1) train the shared supernet and the policy, epoch by epoch, (2) transform the input
architecture: sample `num_samples` transformations from the policy and keep the one with the best
held-out accuracy under the shared weights. With `policy=RUN_DIR` step (1) is skipped: the policy and
supernet saved by an earlier run (RUN_DIR/policy.pt) transform a new `input_arch` without training.

Per epoch (paper, Algorithm 1; official code `train_search.py`):

* weights w on the first 40% of the training split: per batch sample an input beta ~ p(.) (uniform,
  normal and reduction cell apart) and, as the paper trains w on the architectures and their
  transforms, alpha ~ pi(.|beta); one SGD step on CE(beta) + CE(alpha). `train_on_transforms=false`
  gives the official code's variant (beta only).
* policy theta on the other 60%: per batch beta ~ p(.), alpha ~ pi(.|beta); reward r = acc(alpha) -
  acc(beta) on the same batch (shared weights, eval mode, no grad); loss = -(log pi_n + log pi_r)(r - b)
  - 0.003 H_n - 0.003 H_r; Adam. The baseline tracks the reward, b <- 0.99 b + 0.01 r (the official
  code feeds r - b back into it: a bug we fix).
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
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

from .cells import NULL_OP, Cell, CellPair, canonical_op, random_cell
from .policy import NATPolicy
from .transitions import apply_actions, transition_mask

POLICY_FILE = "policy.pt"
POLICY_FORMAT = "nat-policy/1"

#: the official code's "fully concat" op set (DARTS' ops + conv_3x3; null is NAT's N, never run)
FULLY_CONCAT_OPS: tuple[str, ...] = (
    "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
    "dil_conv_5x5", "conv_3x3",
)


@dataclass(frozen=True)
class NATConfig(Config):
    """NAT's settings; the defaults are the paper's (official code) values for CIFAR-10."""

    # what to transform, and with which policy
    input_arch: str = "darts-v2"  # a genotype name (darts-v2, enas, resnet-block, vgg-block, ...) or an arch.json
    policy: str = ""  # a run directory (or policy.pt) of an earlier NAT search: transform without training
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
    train_on_transforms: bool = True  # w also on alpha ~ pi(.|beta) (paper); false: beta only (official code)
    # the policy theta
    policy_lr: float = 3e-4
    policy_betas: tuple[float, float] = (0.5, 0.999)
    policy_weight_decay: float = 5e-4
    policy_embed: int = 100  # op embedding size (per edge)
    policy_features: int = 1024  # node features after the projection
    policy_hidden: int = 100  # GCN hidden size
    policy_dropout: float = 0.0
    entropy_normal: float = 0.003
    entropy_reduce: float = 0.003
    baseline_decay: float = 0.99
    # scoring (rewards and candidates): BN with its running statistics ("running", eval mode), or with the
    # batch's statistics without updating the running ones ("batch", like the official train-mode scoring)
    score_bn: Literal["running", "batch"] = "running"
    # inference
    num_samples: int = 10  # transformations sampled; the best by held-out accuracy is kept
    eval_batch_size: int = 256
    max_eval_batches: int = 0  # 0: the whole held-out split
    # the derived (evaluation) network
    net_C: int = 36
    net_layers: int = 20
    net_auxiliary: bool = True

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        # CPU minutes: a small supernet, 3 epochs; a larger lr and batch-statistics scoring, because after
        # 3 epochs the running BN statistics of a weight-sharing supernet score every arch near chance
        "tiny": {"C": 8, "layers": 5, "epochs": 3, "batch_size": 64, "lr": 0.05, "policy_features": 128,
                 "score_bn": "batch", "eval_batch_size": 500, "max_eval_batches": 2},
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
            (self.net_C >= 1 and self.net_layers >= 1, "net_C and net_layers must be positive"),
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


def cell_positions(C: int, layers: int, size: int, reduction: bool) -> list[tuple[int, int]]:
    """(channels, input size) of every cell of one type in a DARTS network (distinct pairs)."""
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

    def __init__(self, C: int, layers: int, size: int, reduction: bool) -> None:
        self.positions = cell_positions(C, layers, size, reduction)
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
def scoring_mode(model: torch.nn.Module, bn: str = "running") -> Iterator[None]:
    """Score architectures under shared weights, no grad: BN with running statistics (eval mode) or with
    batch statistics while leaving the running ones untouched (train mode with BN momentum 0)."""
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
        for m, (momentum, tracked) in zip(bns, saved, strict=False):
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
    coeffs = torch.tensor(entropy_coeffs, dtype=entropy.dtype, device=entropy.device)
    loss = -log_prob.sum() * (reward - baseline).detach() - (coeffs * entropy).sum()
    return loss, (decay * baseline + (1.0 - decay) * reward).detach()


# ---- the method --------------------------------------------------------------------------------------

@dataclass
class _Parts:
    supernet: DartsSupernet
    policy: NATPolicy
    primitives: tuple[str, ...]
    steps: int
    meta: dict[str, Any] = field(default_factory=dict)


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
        size = min(task.input_shape[1:])
        costs = (EdgeCosts(config.net_C, config.net_layers, size, False),
                 EdgeCosts(config.net_C, config.net_layers, size, True))

        if config.policy:
            parts = self._load_policy(config.policy, task, device)
            self._check_fits(parts, pair, config.policy)
            metrics: dict[str, Any] = {"policy_from": str(config.policy)}
        else:
            parts = self._build(config, task, pair, device)
            metrics = self._train(task, config, run, parts, w_split, p_split, costs)
            if run is not None:
                self._save_policy(parts, run.path / POLICY_FILE)

        return self._transform(task, config, run, parts, pair, input_arch, p_split, costs, metrics)

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
        policy = NATPolicy([NULL_OP, *primitives], config.policy_embed, config.policy_features,
                           config.policy_hidden, config.policy_dropout).to(device)
        meta = {"C": config.C, "layers": config.layers, "primitives": primitives, "steps": steps,
                "num_classes": task.num_classes, "input_shape": list(task.input_shape),
                "policy_embed": config.policy_embed, "policy_features": config.policy_features,
                "policy_hidden": config.policy_hidden, "policy_dropout": config.policy_dropout}
        return _Parts(supernet, policy, tuple(primitives), steps, meta)

    @staticmethod
    def _save_policy(parts: _Parts, path: Path) -> None:
        from nas_common import dist

        if dist.is_main():
            atomic_torch_save({"format": POLICY_FORMAT, "meta": parts.meta,
                               "policy": {k: v.detach().cpu() for k, v in parts.policy.state_dict().items()},
                               "supernet": {k: v.detach().cpu() for k, v in parts.supernet.state_dict().items()}},
                              path)

    def _load_policy(self, where: str, task: Task, device: torch.device) -> _Parts:
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
        c_in = meta["input_shape"][0]
        supernet = DartsSupernet(meta["C"], meta["num_classes"], meta["layers"], meta["primitives"],
                                 steps=meta["steps"], multiplier=meta["steps"], input_channels=c_in)
        policy = NATPolicy([NULL_OP, *meta["primitives"]], meta["policy_embed"], meta["policy_features"],
                           meta["policy_hidden"], meta["policy_dropout"])
        supernet.load_state_dict(payload["supernet"])
        policy.load_state_dict(payload["policy"])
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
                          zip(cell.ops[2 * t:2 * t + 2], cell.inputs[2 * t:2 * t + 2], strict=False)
                          if canonical_op(op) != NULL_OP])
        return nodes

    def _forward(self, parts: _Parts, x: torch.Tensor, pair: CellPair) -> torch.Tensor:
        index = {op: k for k, op in enumerate(parts.primitives)}
        return parts.supernet.forward_sparse(x, self._choice(pair.normal, index), self._choice(pair.reduce, index),
                                             pair.normal.concat, pair.reduce.concat)

    def _sample_inputs(self, parts: _Parts) -> CellPair:
        """beta ~ p(.): the uniform prior, normal and reduction cell drawn apart (global torch RNG)."""
        real = list(parts.primitives)
        return CellPair(random_cell(None, real, parts.steps), random_cell(None, real, parts.steps))

    def _masks(self, pair: CellPair, costs: tuple[EdgeCosts, EdgeCosts]) -> torch.Tensor:
        return torch.stack([transition_mask(pair.normal, False, costs[0]),
                            transition_mask(pair.reduce, True, costs[1])])

    def _transform_pair(self, parts: _Parts, pair: CellPair, costs: tuple[EdgeCosts, EdgeCosts],
                        grad: bool) -> tuple[CellPair, Any]:
        masks = self._masks(pair, costs)
        with torch.set_grad_enabled(grad):
            out = parts.policy(list(pair.cells()), masks)
        acts = out.actions.cpu()
        return CellPair(apply_actions(pair.normal, acts[0]), apply_actions(pair.reduce, acts[1])), out

    # ---- training ------------------------------------------------------------------------------------
    def _train(self, task: Task, config: NATConfig, run: Run, parts: _Parts, w_split: Any, p_split: Any,
               costs: tuple[EdgeCosts, EdgeCosts]) -> dict[str, Any]:
        device = task.device
        supernet, policy = parts.supernet, parts.policy
        w_opt = torch.optim.SGD(supernet.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, max(1, config.epochs), eta_min=config.lr_min)
        p_opt = torch.optim.Adam(policy.parameters(), lr=config.policy_lr, betas=tuple(config.policy_betas),
                                 weight_decay=config.policy_weight_decay)
        baseline = torch.zeros((), device=device)
        start = 0
        state = run.restore(map_location=device) if run is not None else None
        if state is not None:
            supernet.load_state_dict(state["supernet"])
            policy.load_state_dict(state["policy"])
            w_opt.load_state_dict(state["w_opt"])
            p_opt.load_state_dict(state["p_opt"])
            sched.load_state_dict(state["sched"])
            baseline = state["baseline"].to(device)
            start = int(state["epoch"])
        w_loader = make_loader(w_split, config.batch_size, train=True, device=device, augment=config.augment,
                               seed=task.seed)
        p_loader = make_loader(p_split, config.batch_size, train=True, device=device, augment=False,
                               seed=task.seed + 1)
        metrics: dict[str, Any] = {}
        for epoch in range(start, config.epochs):
            w_loader.set_epoch(epoch)
            p_loader.set_epoch(epoch)
            # -- w: CE of beta (and of its transform alpha) on the 40% split
            supernet.train()
            w_loss = torch.zeros((), device=device)
            n_w = 0
            for x, y in self._progress(run, w_loader, f"nat w {epoch + 1}/{config.epochs}"):
                beta = self._sample_inputs(parts)
                loss = F.cross_entropy(self._forward(parts, x, beta), y)
                if config.train_on_transforms:
                    alpha, _ = self._transform_pair(parts, beta, costs, grad=False)
                    loss = loss + F.cross_entropy(self._forward(parts, x, alpha), y)
                w_opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(supernet.parameters(), config.grad_clip)
                w_opt.step()
                w_loss += loss.detach()
                n_w += 1
            sched.step()
            # -- theta: REINFORCE on the 60% split, reward acc(alpha) - acc(beta) on the same batch
            policy.train()
            sums = torch.zeros(4, device=device)  # reward, acc(beta), acc(alpha), entropy
            n_p = 0
            for x, y in self._progress(run, p_loader, f"nat policy {epoch + 1}/{config.epochs}"):
                beta = self._sample_inputs(parts)
                alpha, out = self._transform_pair(parts, beta, costs, grad=True)
                with scoring_mode(supernet, config.score_bn):
                    acc_b = (self._forward(parts, x, beta).argmax(-1) == y).float().mean()
                    acc_a = (self._forward(parts, x, alpha).argmax(-1) == y).float().mean()
                reward = acc_a - acc_b
                loss, baseline = reinforce_step(out.log_prob, out.entropy, reward, baseline,
                                                (config.entropy_normal, config.entropy_reduce),
                                                config.baseline_decay)
                p_opt.zero_grad(set_to_none=True)
                loss.backward()
                p_opt.step()
                sums += torch.stack([reward, acc_b, acc_a, out.entropy.sum().detach()])
                n_p += 1
            s = (sums / max(1, n_p)).tolist()
            metrics = {"w_loss": (w_loss / max(1, n_w)).item(), "reward": s[0], "acc_input": s[1],
                       "acc_transformed": s[2], "entropy": s[3], "baseline": baseline.item(),
                       "lr": sched.get_last_lr()[0]}
            if run is not None:
                run.log(epoch + 1, **metrics)
                run.checkpoint({"supernet": supernet.state_dict(), "policy": policy.state_dict(),
                                "w_opt": w_opt.state_dict(), "p_opt": p_opt.state_dict(),
                                "sched": sched.state_dict(), "baseline": baseline.detach().cpu(),
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
        by_pair = dict(zip(unique, acc, strict=False))
        return [by_pair[p] for p in pairs]

    def _transform(self, task: Task, config: NATConfig, run: Run | None, parts: _Parts, pair: CellPair,
                   input_arch: Arch, p_split: Any, costs: tuple[EdgeCosts, EdgeCosts],
                   metrics: dict[str, Any]) -> SearchResult:
        parts.policy.eval()
        candidates = [self._transform_pair(parts, pair, costs, grad=False)[0] for _ in range(config.num_samples)]
        accs = self._accuracies(parts, [pair, *candidates], p_split, config, task, run)
        acc_input, cand_accs = accs[0], accs[1:]
        order = sorted(range(len(candidates)), key=lambda k: (-cand_accs[k], k))
        net = self._net(config, task)
        best = order[0]
        if task.budget.is_set:  # keep the most accurate candidate within the budget, if any
            within = [k for k in order if not task.budget.violations(
                Arch("darts", candidates[k].to_spec(), net).with_costs().costs)]
            if within:
                best = within[0]
            else:
                warnings.warn("no NAT transform of the input meets the budget: keeping the most accurate one",
                              stacklevel=2)
        chosen = candidates[best]
        state = {
            "input_spec": pair.to_spec(), "output_spec": chosen.to_spec(), "net": net,
            "input_arch": config.input_arch, "policy_from": str(config.policy) if config.policy else "",
            "candidates": [c.to_spec() for c in candidates], "candidate_acc": cand_accs,
            "input_acc": acc_input,
        }
        metrics = {**metrics, "input_acc": acc_input, "best_acc": cand_accs[best],
                   "candidate_acc": cand_accs}
        if run is not None:
            run.log(config.epochs + 1, input_acc=acc_input, best_acc=cand_accs[best])
        return SearchResult(method=self.name, state=state, metrics=metrics, config=config.to_dict())

    @staticmethod
    def _net(config: NATConfig, task: Task) -> dict[str, Any]:
        return {"C": config.net_C, "layers": config.net_layers, "auxiliary": config.net_auxiliary,
                "num_classes": task.num_classes, "input": list(task.input_shape)}

    # ---- the harness's ranking hook ---------------------------------------------------------------------
    def sample_and_score(self, run_dir: str | Path, task: Task, n: int, seed: int) -> list[tuple[Arch, float]]:
        """`n` architectures from NAT's uniform prior with their held-out accuracy under the shared weights
        of a finished search in `run_dir` (for Kendall's tau between supernet and stand-alone accuracy)."""
        import tomllib

        cfg_file = Path(run_dir) / "config.toml"
        saved = tomllib.loads(cfg_file.read_text()).get("config", {}) if cfg_file.is_file() else {}
        config = resolve_config(NATConfig, preset=None, file=saved)
        parts = self._load_policy(str(run_dir), task, task.device)
        gen = torch.Generator().manual_seed(seed)
        pairs = [CellPair(random_cell(gen, parts.primitives, parts.steps),
                          random_cell(gen, parts.primitives, parts.steps)) for _ in range(n)]
        _, p_split = task.dataset.train.split(config.weight_fraction, seed=config.split_seed)
        accs = self._accuracies(parts, pairs, p_split, config, task, None)
        net = self._net(config, task)
        return [(Arch("darts", pair.to_spec(), net), acc) for pair, acc in zip(pairs, accs, strict=False)]

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
