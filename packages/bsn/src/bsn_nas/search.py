"""BSN search: joint training of a super network's weights and its gate distribution under a budget.

Per batch: gates H ~ Bernoulli(sigmoid(logits)) independently per example; the active modules (on and
connected input->output) run; per example the reward is r = -(CE + sum_c lambda_c * max(0, C_c(H) - budget_c));
the loss mean(CE) - sum_b sum_g log P(H_bg) * (r_b - mean(r)) gives the weights their backprop gradient
and the gate logits the REINFORCE one (batch-mean baseline; summed over batch and gates, as the
official code). One SGD step each (weights: 0.1, 0.01 after epoch 150, 0.001 after epoch 225, momentum
0.9, wd 1e-4; gates: lr 1e-3). Derive: gates with sigmoid(logit) > 0.5, modules off any input->output
path removed. A step (`SearchStep`) keeps everything on the device: sampling, connectivity, every cost
(the distributed makespan included) and the penalty, with no host sync unless a host-driven execution
mode is asked for off the CPU.

Budgets are nas_common `Budget`s on the costs `macs`, `params`, `bsn-paper` (the paper's FLOPs,
additions included) and `distributed:K` (the makespan on K workers). Under torchrun every rank draws
its own gates for its own examples (the paper samples per example; the default generator is seeded
with seed + rank), the weights train in DDP and the gate logits' gradients are averaged over ranks,
so every rank holds the same logits.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from nas_common.arch import Arch
from nas_common.config import Config, config_to_dict
from nas_common.context import SearchContext
from nas_common.data import Split, make_loader
from nas_common.errors import BudgetError, ConfigError, RunError
from nas_common.methods import Budget, CliOption, SearchMethod, SearchResult, Task
from nas_common.oneshot import Accumulator, score_candidates
from nas_common.runs import Run

from .costs import (
    COST_NAMES,
    PAPER_COST,
    CostTable,
    cost_table,
    full_cost,
    hinge_penalty,
    min_connected_cost,
    pattern_costs,
)
from .graph import SHIFT_LETTERS, BSNNetwork, ExecMode, SuperGraph, resnet_depth_ok
from .spaces import graph_of

log = logging.getLogger(__name__)

SUPERNETS = {"rescnf": "bsn-rescnf", "resnet": "bsn-resnet", "cnf": "bsn-cnf"}
#: the budget kinds BSN takes (cost names of nas_common's registry) -> the cost of BSN's tables each limits
BUDGET_COSTS = {"macs": "macs", "params": "params", PAPER_COST: "paper", "distributed": "distributed"}
#: the registry name of each of BSN's costs (what arch.json and budgets call it; `distributed` takes its K)
COST_KEYS = {v: k for k, v in BUDGET_COSTS.items()}
DEFAULT_K = 2  # workers of the distributed cost reported without a distributed budget (official `parallel_2`)


@dataclass(frozen=True)
class BSNConfig(Config):
    """BSN's hyperparameters; the defaults are the paper's / official code's (`paper` preset).

    Budgets are not config values: they come with the task (`--budget-macs`, `--budget-params`,
    `--budget bsn-paper=FLOPS`, `--budget distributed:K=STEPS`)."""

    # the super network: ResCNF (the residual fabric, whose derived networks include the paper's
    # B-ResNet row), B-ResNet (the official `-arch ResNet`) or B-CNF
    supernet: Literal["rescnf", "resnet", "cnf"] = "rescnf"
    depth: int = 20                     # ResCNF / B-ResNet: ResNet depth 6n+2, i.e. (depth-2)/6 blocks per stage
    widths: tuple[int, ...] = (16, 32, 64)  # ResCNF / B-ResNet stage widths
    shift: str = "slr"                  # ResCNF: the shortcut source rules (official default "slr")
    cnf_layers: int = 8                 # B-CNF layers (the official README's fabric)
    cnf_channels: int = 45              # B-CNF channels: the full fabric is then 406M FLOPs, the paper's CNF
    epochs: int = 300
    batch_size: int = 64                # global: split over the ranks under torchrun
    lr: float = 0.1
    lr_milestones: tuple[int, ...] = (150, 225)  # lr *= gamma after these epochs (0-based, as the official code)
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    gate_lr: float = 1e-3
    gate_momentum: float = 0.0
    gate_init: float = 3.0              # logit: p = sigmoid(3) = 0.95
    threshold: float = 0.5              # derive: keep a module when its gate probability exceeds this
    lambda_paper: float = 1e-7          # per FLOP of the paper's count (MACs + additions): the paper's 1e-7
    lambda_macs: float = 1e-7           # per MAC (with --budget-macs)
    lambda_params: float = 1e-5         # per parameter (not in the paper's text: our choice, ~ same pull as MACs)
    lambda_distributed: float = 0.1     # per schedule step (our choice)
    # with no budget: a plain penalty lambda*C (the official default, budget 0, on its FLOP count)
    unbudgeted_cost: Literal["paper", "macs", "params", "none"] = "paper"
    val_size: int = 5000                # the last val_size training images: validation (not trained on)
    augment: bool = True                # pad-4 crop + flip
    # how gated modules run (see BSNNetwork): auto = skip/gather decided on the host when the device is
    # the CPU (free there), dense elsewhere (no host sync in a step); skip/gather off the CPU copy the
    # sampled pattern to the host every step
    execution: Literal["auto", "dense", "skip", "gather"] = "auto"
    gather_below: float = 0.9           # auto: gather when at most this fraction of the batch needs a module
    # BatchNorm statistics in training: "active" = of the examples that run the module (each example runs
    # its own sub-network; every execution mode agrees), "batch" = of the whole batch (the official dense
    # code, which also normalises over examples that skip the module; implies dense execution)
    bn_stats: Literal["active", "batch"] = "active"
    eval_batch_size: int = 256

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        # cifar10-mini on a CPU in minutes: 4,160 train / 500 validation images, 4 epochs (260 steps).
        # The gates move 50x faster to settle within those few hundred steps, and lambda is 5x smaller
        # so that the penalty does not outrun what the young weights gain over chance (see the README).
        "tiny": {"epochs": 4, "lr": 0.05, "lr_milestones": (2,), "gate_lr": 0.05, "lambda_macs": 2e-8,
                 "lambda_paper": 2e-8, "val_size": 500},
    }

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs}: BSN derives its network from the gates it trains, so with "
                              f"no epoch it would write an untrained network; use -o epochs=N with N >= 1")
        for name in ("batch_size", "eval_batch_size", "cnf_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        if not all(w >= 1 for w in self.widths) or not self.widths:
            raise ConfigError(f"widths={list(self.widths)} must be positive stage widths, e.g. [16, 32, 64]")
        if self.val_size < 0:
            raise ConfigError(f"val_size={self.val_size} must be >= 0 (0: hold out no images)")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold={self.threshold} must be a probability in (0, 1) (the paper's 0.5)")
        if not 0.0 <= self.gather_below <= 1.0:
            raise ConfigError(f"gather_below={self.gather_below} must be a fraction in [0, 1]")
        for name in ("lr", "gate_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        for name in ("lambda_paper", "lambda_macs", "lambda_params", "lambda_distributed", "weight_decay",
                     "momentum", "gate_momentum"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if set(self.shift) - set(SHIFT_LETTERS) or len(set(self.shift)) != len(self.shift):
            raise ConfigError(f"shift={self.shift!r} must be made of the letters s, l, r, each at most once "
                              f"(the official default 'slr'; '' for no shortcuts)")
        if self.bn_stats == "batch" and self.execution in ("skip", "gather"):
            raise ConfigError(f"bn_stats='batch' (whole-batch BatchNorm statistics, the official code) runs every "
                              f"module on the whole batch: use execution='dense' or 'auto', not {self.execution!r}")


def execution_mode(config: BSNConfig, device: torch.device) -> ExecMode:
    """The `BSNNetwork` mode a search runs: `auto` decides on the host only where that costs no sync."""
    if config.bn_stats == "batch":
        return "dense"
    if config.execution == "auto":
        return "auto" if torch.device(device).type == "cpu" else "dense"
    return config.execution


def distributed_workers(budget: Budget) -> int:
    """K of a `distributed:K` budget, else `DEFAULT_K` (the K whose makespan BSN reports)."""
    got = budget.get("distributed")
    return int(got[0].partition(":")[2]) if got is not None else DEFAULT_K


def budgets_of(task: Task, config: BSNConfig) -> dict[str, tuple[float, float]]:
    """BSN cost name (`macs`, `paper`, `params`, `distributed`) -> (budget, lambda) of every cost the
    objective penalises: the task's budgets, or without one the official plain penalty (budget 0)."""
    lam = {"macs": config.lambda_macs, "paper": config.lambda_paper, "params": config.lambda_params,
           "distributed": config.lambda_distributed}
    out: dict[str, tuple[float, float]] = {}
    for kind, name in BUDGET_COSTS.items():
        got = task.budget.get(kind)
        if got is not None:
            out[name] = (float(got[1]), lam[name])
    if not out and config.unbudgeted_cost != "none":
        out[config.unbudgeted_cost] = (0.0, lam[config.unbudgeted_cost])  # the official default: -oc 0
    return out


def supernet_graph(task: Task, config: BSNConfig) -> SuperGraph:
    c, h, w = task.input_shape
    if config.supernet in ("resnet", "rescnf"):
        if not resnet_depth_ok(config.depth):
            raise ConfigError(f"depth={config.depth} is not a CIFAR ResNet depth: use 6n+2 (8, 14, 20, 32, 56, 110)")
        if config.supernet == "resnet":
            net = {"depth": config.depth, "widths": list(config.widths), "num_classes": task.num_classes,
                   "input": [c, h, w]}
        else:
            net = {"blocks": (config.depth - 2) // 6, "widths": list(config.widths), "shift": config.shift,
                   "num_classes": task.num_classes, "input": [c, h, w]}
    else:
        if config.cnf_layers < 2:
            raise ConfigError(f"cnf_layers={config.cnf_layers}: a fabric needs at least 2 layers")
        net = {"layers": config.cnf_layers, "channels": config.cnf_channels, "num_classes": task.num_classes,
               "input": [c, h, w]}
    return graph_of(SUPERNETS[config.supernet], net)


def _budget_flag(name: str, k: int, value: float) -> str:
    """How a user gives a budget of BSN cost `name` on the command line."""
    if name in ("macs", "params"):
        return f"--budget-{name} {value:.4g}"
    key = f"distributed:{k}" if name == "distributed" else COST_KEYS[name]
    return f"--budget {key}={value:.4g}"


def check_budgets(graph: SuperGraph, budgets: dict[str, tuple[float, float]], k: int) -> dict[str, float]:
    """Refuse a budget below the cheapest connected network; return each cost's floor."""
    floors = {}
    for name, (budget, _) in budgets.items():
        floor = min_connected_cost(graph, name)
        floors[name] = floor
        if budget > 0 and budget < floor:
            what = f"{COST_KEYS[name]}{f':{k}' if name == 'distributed' else ''}"
            unit = " steps" if name == "distributed" else ""
            raise BudgetError(
                f"{what} budget {budget:.4g} is below the cheapest connected network of this {graph.space} super "
                f"network ({floor:.4g}{unit}, full network {full_cost(graph, name, k):.4g}{unit}): give at least "
                f"{_budget_flag(name, k, floor)} or choose a smaller super network")
    return floors


def data_splits(task: Task, config: BSNConfig) -> tuple[Split, Split | None]:
    """BSN's split of the training data: the last `val_size` images are held out (None when 0), the rest train.

    The split is positional (the official code's last 5,000 images), so it depends on the config only,
    not on task.seed; `search` and `sample_and_score` both take it from here.
    """
    n_train = len(task.dataset.train)
    if not 0 <= config.val_size < n_train:
        raise ConfigError(f"val_size={config.val_size} must be below the {n_train} training images "
                          f"(e.g. -o val_size={n_train // 10}, or 0 for no validation)")
    idx = torch.arange(n_train)
    train_split = task.dataset.train.subset(idx[: n_train - config.val_size])
    val_split = task.dataset.train.subset(idx[n_train - config.val_size:]) if config.val_size else None
    return train_split, val_split


def lr_at(config: BSNConfig, epoch: int) -> float:
    """Step schedule of the official code: lr * gamma^(milestones m with epoch > m), epochs counted from 0.

    With the paper's (150, 225): 0.1 for epochs 0-150, 0.01 for 151-225, 0.001 from 226 on.
    """
    return config.lr * config.lr_gamma ** sum(epoch > m for m in config.lr_milestones)


def reinforce_loss(logits: torch.Tensor, gates: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """-sum_b log P(H_b) * (r_b - mean r): its gradient w.r.t. the logits is the REINFORCE estimate.

    logits: (G,), gates: (B, G) float {0,1}, reward: (B,) (detached). log P(H_b) sums over gates;
    the batch-mean reward is the baseline; like the official code the estimate is summed over the batch.
    """
    logp = -F.binary_cross_entropy_with_logits(logits.expand_as(gates), gates, reduction="none").sum(1)
    adv = (reward - reward.mean()).detach()
    return -(logp * adv).sum()


def _removed_distributed_flag(value: str) -> dict[str, str]:
    raise ConfigError(f"--budget-distributed is gone: the distributed budget is a nas_common budget now, "
                      f"--budget distributed:K=STEPS (e.g. --budget distributed:2=6 for at most 6 steps on 2 "
                      f"workers; you gave {value!r})")


@dataclass
class SearchStep:
    """One BSN training step on a batch: sample, cost, forward, REINFORCE + backprop, one SGD step each.

    `step(x, y, acc)` adds the batch's cross-entropy and correct predictions to the device-side
    Accumulator `acc`, with the summed `penalty` and the summed sampled cost of each penalised cost
    (`sampled_<name>`). Gates are drawn on the device and everything after stays there:
    `SuperGraph.active` and every `CostTable.cost` (the distributed makespan included) are batched
    tensor code, so the step never waits for the device, except in the host-driven execution modes
    chosen explicitly off the CPU (see `execution_mode`). `net` is the module the forward runs (the
    super network in DDP under torchrun); `ctx` averages the gate logits' gradients over ranks.
    """

    graph: SuperGraph
    table: CostTable
    model: BSNNetwork
    logits: torch.nn.Parameter
    opt_w: torch.optim.Optimizer
    opt_g: torch.optim.Optimizer
    budgets: dict[str, tuple[float, float]]
    floors: dict[str, float]
    k: int
    net: nn.Module | None = None
    ctx: SearchContext | None = field(default=None, repr=False)

    @classmethod
    def build(cls, task: Task, config: BSNConfig, ctx: SearchContext | None = None) -> SearchStep:
        """The super network, gate logits and optimisers of a search (budgets checked first); with a
        search context, the super network in DDP and the logits equal to rank 0's."""
        device = torch.device(ctx.device if ctx is not None else task.device)
        graph = supernet_graph(task, config)
        budgets = budgets_of(task, config)
        k = distributed_workers(task.budget)
        floors = check_budgets(graph, budgets, k)
        model = BSNNetwork(graph, mode=execution_mode(config, device), gather_below=config.gather_below,
                           bn_stats=config.bn_stats).to(device)
        logits = torch.nn.Parameter(torch.full((graph.num_gates,), float(config.gate_init), device=device))
        opt_w = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
        opt_g = torch.optim.SGD([logits], lr=config.gate_lr, momentum=config.gate_momentum)
        table = cost_table(graph)
        graph._plan(device)  # the per-device copies of the graph's and tables' matrices, made
        table._on(device)    # now rather than in the first step
        table.schedule.to(device)
        net = model
        if ctx is not None:
            net = ctx.wrap(model)
            ctx.broadcast_params_([logits])
        return cls(graph, table, model, logits, opt_w, opt_g, budgets, floors, k, net, ctx)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, acc: Accumulator | None = None) -> None:
        b = x.shape[0]
        gates = torch.bernoulli(torch.sigmoid(self.logits.detach()).expand(b, -1))
        active = self.graph.active(gates)
        penalty = torch.zeros(b, dtype=torch.float64, device=x.device)
        costs: dict[str, torch.Tensor] = {}
        for name, (budget, lam) in self.budgets.items():
            cost = self.table.cost(name, active, self.k)
            penalty = penalty + hinge_penalty(cost, budget, lam)
            costs[name] = cost
        penalty = penalty.to(torch.float32)
        out = (self.net if self.net is not None else self.model)(x, active=active)
        ce = F.cross_entropy(out, y, reduction="none")
        reward = -(ce.detach() + penalty)
        loss = ce.mean() + reinforce_loss(self.logits, gates, reward)
        self.opt_w.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the weights' gradients over ranks
        if self.ctx is not None:
            self.ctx.all_reduce_grads([self.logits])
        self.opt_w.step()
        self.opt_g.step()
        if acc is not None:
            with torch.no_grad():
                acc.add_batch(out, y, loss=ce.mean())
                acc.add(penalty=penalty.sum(), **{f"sampled_{nm}": c.sum() for nm, c in costs.items()})


class BSNSearch(SearchMethod):
    """Budgeted Super Networks (Veniat & Denoyer, CVPR 2018) as a nas_common search method."""

    name: ClassVar[str] = "bsn"
    spaces = ("bsn-rescnf", "bsn-resnet", "bsn-cnf")
    # the old flag, kept only to say where the distributed budget went
    cli_options = (CliOption("--budget-distributed", to_overrides=_removed_distributed_flag, metavar="K:VALUE",
                             help="removed: give the distributed budget as --budget distributed:K=STEPS"),)
    budget_kinds: ClassVar[tuple[str, ...]] = tuple(BUDGET_COSTS)
    config_cls: ClassVar[type] = BSNConfig

    # ---- refusals, before anything is written ----------------------------------------------------
    def check(self, task: Task, config: BSNConfig) -> None:
        """A budget kind BSN does not take, a super network that cannot be built, a held-out part or a
        batch the training images cannot fill, and a budget below the cheapest connected network."""
        super().check(task, config)
        graph = supernet_graph(task, config)
        train_split, _ = data_splits(task, config)
        ctx = task.context
        batch = ctx.per_rank_batch(config.batch_size)  # the global batch: refused unless the ranks share it
        per_rank = len(train_split) // ctx.world_size
        if per_rank < batch:
            where = f" per rank ({ctx.world_size} ranks, {batch} images each a step)" if ctx.distributed else ""
            raise ConfigError(f"batch_size={config.batch_size} exceeds the {per_rank} training images{where} (after "
                              f"holding out val_size={config.val_size}): lower -o batch_size or -o val_size")
        check_budgets(graph, budgets_of(task, config), distributed_workers(task.budget))

    # ---- search --------------------------------------------------------------------------------
    def search(self, task: Task, config: BSNConfig, run: Run) -> SearchResult:
        ctx = task.context
        device = ctx.device
        train_split, val_split = data_splits(task, config)
        step = SearchStep.build(task, config, ctx)
        graph, model, net, logits, opt_w, opt_g = step.graph, step.model, step.net, step.logits, step.opt_w, step.opt_g
        budgets, floors, k = step.budgets, step.floors, step.k
        loader = ctx.loader(train_split, ctx.per_rank_batch(config.batch_size), train=True, augment=config.augment,
                            seed=task.seed)  # batch_size is the global batch
        held_out = val_split.fingerprint() if val_split is not None else None
        history: list[dict[str, Any]] = []
        start = 0
        components = {"model": {"net": net}, "optimizers": {"weights": opt_w, "gates": opt_g}}
        got = run.resume(**components, map_location=device)
        if got is not None:
            with torch.no_grad():
                logits.copy_(torch.as_tensor(got.extra["logits"]).to(device))
            history = list(got.extra.get("history", []))
            start = got.epoch

        for epoch in range(start, config.epochs):
            lr = lr_at(config, epoch)
            for group in opt_w.param_groups:
                group["lr"] = lr
            loader.set_epoch(epoch)
            net.train()
            acc = Accumulator(device)
            for x, y in run.progress(loader, desc=f"bsn epoch {epoch + 1}/{config.epochs}", total=len(loader)):
                with ctx.step():
                    step(x, y, acc)
            s = acc.compute(reduce_ranks=True)  # the one host read of the epoch, summed over ranks
            ctx.sync_buffers(model)  # every rank continues with rank 0's BatchNorm statistics
            probs = torch.sigmoid(logits.detach()).cpu()
            keep = ctx.decide(self._keep, graph, probs, config.threshold)
            rec: dict[str, Any] = {"train/lr": lr, "train/loss": s["loss"], "train/top1": s["top1"],
                                   "search/penalty": s["penalty"]}
            rec.update({f"search/sampled_{nm}": s[f"sampled_{nm}"] for nm in budgets})
            rec.update({f"search/derived_{nm}": v for nm, v in pattern_costs(graph, keep, k).items()})
            rec["search/gates_on"] = len(keep)
            rec["search/gate_p_mean"] = float(probs.mean())
            rec["search/gates_undecided"] = int(((probs > 0.05) & (probs < 0.95)).sum())
            if val_split is not None and ctx.is_main:  # rank 0 logs: only it evaluates
                ev = evaluate(model, graph, keep, val_split, config.eval_batch_size, device)
                rec.update({"valid/loss": ev["loss"], "valid/top1": ev["top1"]})
            history.append(rec)
            run.log(epoch + 1, **rec)
            run.save_state(epoch + 1, **components,
                           extra={"logits": logits.detach().cpu().clone(), "history": history, "held_out": held_out})

        probs = torch.sigmoid(logits.detach()).cpu()
        state_out = {"logits": logits.detach().cpu().clone(), "probs": probs, "space": graph.space,
                     "net": dict(graph.net), "gate_names": graph.gate_names, "threshold": config.threshold,
                     "budgets": {nm: v[0] for nm, v in budgets.items()}, "distributed_k": k}
        result = SearchResult(method=self.name, state=state_out, config=config_to_dict(config))
        with warnings.catch_warnings(record=True) as caught:  # `nas search` derives again and warns then
            warnings.simplefilter("always")
            arch = ctx.decide(self.derive, result)
        derived = arch.build().to(device)
        wanted = derived.state_dict()
        derived.load_state_dict({n: v for n, v in model.state_dict().items() if n in wanted}, strict=True)
        costs_now = pattern_costs(graph, arch.spec["keep"], k)
        over = [f"{nm} {costs_now[nm]:.4g} > budget {budget:.4g}" for nm, (budget, _) in budgets.items()
                if budget > 0 and costs_now[nm] > budget]
        metrics: dict[str, Any] = {**{f"derived_{nm}": v for nm, v in costs_now.items()},
                                   "cost_floors": floors, "over_budget": over,
                                   "modules_kept": len(arch.spec["keep"]), "modules_total": graph.num_gates,
                                   "fallback_path": any("most probable path" in str(w.message) for w in caught)}
        if history:
            last = history[-1]
            for mine, theirs in (("train_acc", "train/top1"), ("train_loss", "train/loss"), ("val_acc", "valid/top1")):
                if theirs in last:
                    metrics[mine] = last[theirs]
        if ctx.is_main:
            metrics["test_acc"] = evaluate(derived, None, None, task.dataset.test, config.eval_batch_size,
                                           device)["top1"]
            if over:
                log.warning("BSN's derived network is over budget: %s (train longer, raise the lambda_* penalty, or "
                            "relax the budget)", "; ".join(over))
        result.model = derived.cpu()
        result.metrics = metrics
        return result

    @staticmethod
    def _keep(graph: SuperGraph, probs: torch.Tensor, threshold: float) -> list[str]:
        """The paper's rule: modules whose gate probability exceeds `threshold`, pruned to the connected ones.

        When those modules do not connect input and output at all, the most probable input->output path
        is kept instead (with a warning by `derive`): a network that ignores its input is never useful.
        """
        on = [nm for nm, pr in zip(graph.gate_names, probs.tolist(), strict=False) if pr > threshold]
        if graph.connected(on):
            return graph.prune(on)
        return most_probable_path(graph, probs)

    # ---- the harness's ranking hook --------------------------------------------------------------
    def sample_and_score(self, run_dir: str | Path, task: Task, n: int, seed: int) -> list[tuple[Arch, float]]:
        """`n` distinct networks drawn from a finished run's learned gate distribution, each with its
        held-out accuracy under the super network's jointly trained weights (no fine-tuning).

        Gate patterns are drawn i.i.d. from Bernoulli(sigmoid(logits)) of the run's final checkpoint
        with a torch.Generator seeded by `seed`; a pattern stands for its sub-network (the modules on an
        input->output path), so patterns that differ only in dead modules are one network, and patterns
        that do not connect input and output are no network and are skipped. At most
        `MAX_DRAWS_PER_ARCH * n` patterns are drawn: a peaked distribution may give fewer than n networks.
        Each network is scored by the super network with its gates fixed for every example, on the
        held-out images BSN's search validates on (its last `val_size` training images, `data_splits`;
        their fingerprint must be the one the search recorded), in eval mode. The BatchNorm statistics
        are used as trained, not recalibrated: BSN accumulates them under per-example samples of this
        same distribution, and its logged validation accuracy and the saved model.pt use them unchanged,
        so the score is the accuracy of the pruned network a run would save for that pattern. Each Arch
        is what `derive` writes for the pattern.
        """
        state, config, budget = load_final_state(run_dir, task)
        graph = supernet_graph(task, config)
        _, val_split = data_splits(task, config)
        if val_split is None:
            raise ConfigError(f"the search in {str(run_dir)!r} held out no images (val_size=0), so there is no data "
                              f"to score on: search again with -o val_size=N (e.g. the paper's 5000)")
        recorded = state["extra"].get("held_out")
        if recorded is not None and recorded != val_split.fingerprint():
            raise RunError(f"the held-out images of the task differ from those the search in {str(run_dir)!r} "
                           f"validated on ({recorded}): score it on the dataset and subset its search used")
        model = BSNNetwork(graph, mode=config.execution, gather_below=config.gather_below).to(task.device)
        try:
            model.load_state_dict(state["model"]["net"])
        except RuntimeError:
            raise RunError(f"the super network in {str(run_dir)!r} does not fit dataset {task.dataset.name!r} "
                           f"({task.num_classes} classes, input {list(task.input_shape)}): score it on the dataset "
                           f"its search used") from None
        probs = torch.sigmoid(torch.as_tensor(state["extra"]["logits"]).detach().float().cpu())
        patterns = sample_distinct(graph, probs, n, torch.Generator().manual_seed(int(seed)))
        accs = score_patterns(model, graph, patterns, val_split, config.eval_batch_size, task.device)
        names = graph.gate_names
        k = distributed_workers(budget)
        return [(self._arch(graph, [nm for nm, on in zip(names, row.tolist(), strict=True) if on], k), acc)
                for row, acc in zip(patterns, accs, strict=False)]

    # ---- derive --------------------------------------------------------------------------------
    def derive(self, result: SearchResult) -> Arch:
        """Gates with sigmoid(logit) > threshold, modules off every input->output path removed."""
        st = result.state
        graph = graph_of(st["space"], st["net"])
        probs = st["probs"] if "probs" in st else torch.sigmoid(torch.as_tensor(st["logits"]))
        on = [nm for nm, pr in zip(graph.gate_names, probs.tolist(), strict=False) if pr > st.get("threshold", 0.5)]
        if not graph.connected(on):
            warnings.warn("no input->output path has all its gates above the threshold: the derived network is "
                          "the most probable path instead (train longer or lower the penalty)", stacklevel=2)
        keep = self._keep(graph, probs, st.get("threshold", 0.5))
        return self._arch(graph, keep, st.get("distributed_k", DEFAULT_K))

    def _arch(self, graph: SuperGraph, keep: list[str], k: int) -> Arch:
        """The arch.json of the connected kept modules `keep` (what `derive` writes; the hook's archs too),
        with its costs under their registry names: macs, params, bsn-paper and distributed:K."""
        costs = pattern_costs(graph, keep, k)
        return Arch(space=graph.space, spec={"keep": list(keep)}, net=dict(graph.net),
                    costs={"macs": costs["macs"], "params": costs["params"], PAPER_COST: costs["paper"],
                           f"distributed:{k}": costs["distributed"]},
                    method=self.name)


@torch.no_grad()
def evaluate(model: BSNNetwork, graph: SuperGraph | None, keep: list[str] | None, split: Split, batch_size: int,
             device: torch.device | str) -> dict[str, float]:
    """Top-1 (a fraction) and mean cross-entropy on `split` of the deterministic network: `model` as it is
    (a derived network, graph None) or the super network with the gates `keep` on for every example."""
    was = model.training
    model.eval()
    active = None
    if graph is not None:
        keep_set = set(keep or [])
        active = graph.active(torch.tensor([[nm in keep_set for nm in graph.gate_names]], device=device))
    acc = Accumulator(device)
    for x, y in make_loader(split, batch_size, train=False, device=device):
        out = model(x, active=active.expand(x.shape[0], -1)) if active is not None else model(x)
        acc.add_batch(out, y)
    model.train(was)
    return acc.compute()


MAX_DRAWS_PER_ARCH = 100  # sample_and_score draws at most this many gate patterns per network asked for
DRAW_CHUNK = 1024          # patterns drawn at once (fixed, so the draws for n are a prefix of those for 2n)


def load_final_state(run_dir: str | Path, task: Task) -> tuple[dict[str, Any], BSNConfig, Budget]:
    """The final checkpoint of a finished BSN search in `run_dir` on the task's dataset, its config and its
    budget (BSN's held-out images do not depend on the seed, so any task seed will do); RunError otherwise."""
    run = Run.open(run_dir, method=BSNSearch.name, task=task, same_seed=False)
    config = run.config(BSNConfig)
    state = run.final_state(config.epochs, map_location="cpu", keys=("net",))
    if "logits" not in (state.get("extra") or {}):
        raise RunError(f"{run.checkpoint_path} holds no gate logits: it is not a checkpoint of a `nas search bsn` run")
    return state, config, Budget.from_dict(run.record.get("budget"))


def sample_distinct(graph: SuperGraph, probs: torch.Tensor, n: int, gen: torch.Generator,
                    max_draws: int | None = None) -> torch.Tensor:
    """Up to n distinct connected sub-networks drawn from independent Bernoulli(probs) gates, in draw order.

    Returns a (k, G) bool tensor, k <= n, whose rows are normalised patterns: a gate is on iff its module
    is on an input->output path, so two rows differ iff their pruned networks differ. Draws stop after
    n distinct networks or `max_draws` patterns (default MAX_DRAWS_PER_ARCH * n), whichever comes first.
    """
    probs = probs.detach().float().cpu()
    limit = MAX_DRAWS_PER_ARCH * n if max_draws is None else max_draws
    seen: set[bytes] = set()
    rows: list[torch.Tensor] = []
    drawn = 0
    while len(rows) < n and drawn < limit:
        size = min(DRAW_CHUNK, limit - drawn)
        gates = torch.rand(DRAW_CHUNK, len(probs), generator=gen)[:size] < probs
        drawn += size
        active = graph.active(gates)
        pats = active[:, graph.modules][active[:, -1]]  # connected draws, dead modules switched off
        for row in pats:
            key = row.numpy().tobytes()
            if key not in seen:
                seen.add(key)
                rows.append(row)
                if len(rows) == n:
                    break
    return torch.stack(rows) if rows else torch.zeros(0, len(probs), dtype=torch.bool)


def score_patterns(model: BSNNetwork, graph: SuperGraph, patterns: torch.Tensor, split: Split, batch_size: int,
                   device: torch.device | str) -> list[float]:
    """Top-1 accuracy on `split` of the super network with each row of `patterns` as its gates (eval mode).

    Batched through nas_common's `score_candidates` (sums on the device, one host read): one forward
    per batch of `batch_size` images and network; when the held-out set is smaller than `batch_size`,
    several networks share one forward, each example running its own network (the per-example gating
    BSN trains with; eval-mode BatchNorm keeps them independent).
    """
    k = patterns.shape[0]
    if k == 0:
        return []
    act_all = graph.active(patterns.bool().cpu()).to(device)  # (k, N)
    group = max(1, batch_size // max(1, min(batch_size, len(split))))

    def forward(cands: list[int], x: torch.Tensor) -> torch.Tensor:
        g, m = len(cands), x.shape[0]  # network-major: rows [j*m, (j+1)*m) run network cands[j]
        rows = act_all.index_select(0, torch.tensor(cands, device=act_all.device))
        act = rows.repeat_interleave(m, 0, output_size=g * m)
        return model(x if g == 1 else x.repeat(g, *([1] * (x.dim() - 1))), active=act)

    batches = make_loader(split, batch_size, train=False, device=device)
    scores = score_candidates(list(range(k)), forward, batches, model=model, group=group, bn="eval")
    return [top1 for top1, _ in scores]


def most_probable_path(graph: SuperGraph, probs: torch.Tensor) -> list[str]:
    """The input->output path maximising the product of its gates' probabilities (DAG dynamic programme)."""
    logp = torch.log(probs.clamp_min(1e-12)).tolist()
    gate_of = {node: g for g, node in enumerate(graph.modules)}
    best: list[float] = [-math.inf] * len(graph.nodes)
    back: list[int] = [-1] * len(graph.nodes)
    for i, node in enumerate(graph.nodes):
        if node.kind == "input":
            best[i] = 0.0
        elif node.kind == "module":
            best[i] = best[node.inputs[0]] + logp[gate_of[i]]
            back[i] = node.inputs[0]
        else:
            j = max(node.inputs, key=lambda t: best[t])
            best[i], back[i] = best[j], j
    path, i = [], len(graph.nodes) - 1
    while i >= 0:
        if graph.nodes[i].kind == "module":
            path.append(graph.nodes[i].name)
        i = back[i]
    return graph.prune(path)


__all__ = ["BUDGET_COSTS", "BSNConfig", "BSNSearch", "COST_NAMES", "DEFAULT_K", "SearchStep", "budgets_of",
           "check_budgets", "data_splits", "distributed_workers", "evaluate", "execution_mode", "load_final_state",
           "lr_at", "most_probable_path", "reinforce_loss", "sample_distinct", "score_patterns", "supernet_graph"]
