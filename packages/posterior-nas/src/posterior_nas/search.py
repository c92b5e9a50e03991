"""The `posterior-nas` method: train the hybrid representation, then posterior-guided sampling.

    1. Train the supernet end to end with concrete dropout on every conv's input channels (one drop
       rate per group) and the loss CE + regulariser (Eq. 15, no weight decay): this fits the
       variational posterior over architectures (drop rates) and weights jointly.
    2. Draw C hard masks from the learned drop rates; reject those over the budget before scoring;
       score each with the inherited weights on held-out data (no fine-tuning); keep the best.
    3. Optionally, the same with C uniform masks at the posterior's mean drop rate (the baseline).
    4. `derive`: the best mask as a physically pruned network of the supernet (arch.json); retrain it
       with `nas train`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from nas_common.arch import Arch
from nas_common.config import Config, config_from_dict
from nas_common.data import make_loader
from nas_common.errors import BudgetError, ConfigError, RunError
from nas_common.methods import SearchResult, Task
from nas_common.runs import Run

from .gates import Regulariser
from .sampling import best_index, channel_rates, draw_masks, score_masks
from .spaces import get_supnet_space
from .supernets import SupNet

L2_PER_SPACE = {"supnet-m": 50.0, "supnet-mi": 150.0, "supnet-r": 80.0}
N_PER_SPACE = {"supnet-m": 5e5, "supnet-mi": 5e5, "supnet-r": 1.2e6}


@dataclass(frozen=True)
class PosteriorConfig(Config):
    """Posterior-guided one-shot NAS. Defaults: the paper (SupNet-MI on CIFAR-10, supplementary)."""

    space: Literal["supnet-m", "supnet-mi", "supnet-r"] = "supnet-mi"
    width: int | None = None  # supernet base width; None: the space's (M 96, MI 160, R 64)
    blocks: tuple[int, ...] | None = None  # blocks per stage; None: the space's ([4,4,4] / [3,4,6,3])
    stem: int | None = None  # SupNet-M/MI stem channels; None: 16
    stem_stride: int = 1  # SupNet-M/MI stem stride: 1 is the paper; 2 quarters the cost (CPU variants)
    # hybrid representation (concrete dropout on conv input channels)
    temperature: float = 0.2
    p_init: float = 0.1
    l2: float | None = None  # prior precision l^2; None: the paper's per supernet (M 50, MI 150, R 80)
    N: float | None = None  # data-set size scale of the KL term; None: 5e5 (CIFAR), 1.2e6 (SupNet-R)
    regulariser: Literal["paper", "concrete"] = "paper"
    # training
    epochs: int = 1800
    batch_size: int = 128
    lr: float = 0.01
    lr_min: float = 0.0
    momentum: float = 0.9
    p_lr_mult: float = 1.0  # learning-rate multiplier of the drop-rate logits (1 = the paper)
    cutout: int = 16
    val_fraction: float = 0.1  # held-out part of the training split, for scoring masks
    # sampling
    num_samples: int = 1500  # C
    max_draws_factor: int = 50  # with a budget: draw at most this many x C masks looking for C that fit
    score_batch: int = 1000  # folded batch when scoring (masks x images per forward)
    uniform_baseline: bool = True  # also score C uniform masks at the posterior's mean drop rate

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        "tiny": {"space": "supnet-m", "width": 8, "blocks": (1, 1, 1), "stem": 8, "stem_stride": 2, "epochs": 40,
                 "batch_size": 64, "lr": 0.05, "N": 4e3, "p_lr_mult": 5.0, "cutout": 0, "num_samples": 100,
                 "score_batch": 500, "val_fraction": 0.2},
    }

    def __post_init__(self) -> None:
        for name in ("temperature", "N", "l2", "lr", "batch_size", "epochs", "num_samples", "score_batch"):
            v = getattr(self, name)
            if v is not None and not v > 0 and not (name == "epochs" and v == 0):
                raise ConfigError(f"{name}={v!r} must be positive")
        if not 0.0 < self.p_init < 1.0:
            raise ConfigError(f"p_init={self.p_init!r} must be in (0, 1) (the paper uses 0.1)")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction!r} must be in (0, 1)")

    def resolved_l2(self) -> float:
        return self.l2 if self.l2 is not None else L2_PER_SPACE[self.space]

    def resolved_N(self) -> float:
        return self.N if self.N is not None else N_PER_SPACE[self.space]


def supernet_net(config: PosteriorConfig, task: Task) -> dict[str, Any]:
    """The `net` dict of the supernet: the space's defaults, the config's shape, the task's data."""
    space = get_supnet_space(config.space)
    net = {**space.default_net, "num_classes": task.num_classes, "input": list(task.input_shape)}
    if config.width is not None:
        net["width"] = config.width
    if config.blocks is not None:
        net["blocks"] = list(config.blocks)
    if config.stem is not None:
        if "stem" not in net:
            raise ConfigError(f"stem applies to supnet-m/supnet-mi, not {config.space}: remove it")
        net["stem"] = config.stem
    if config.stem_stride != 1:
        if "stem_stride" not in net:
            raise ConfigError(f"stem_stride applies to supnet-m/supnet-mi, not {config.space}: remove it")
        net["stem_stride"] = config.stem_stride
    return space.validate_net(net)


def _check_budget_feasible(space: Any, net_cfg: dict[str, Any], task: Task) -> None:
    """Fail before training when even the smallest network of the supernet (every group dropped:
    stem, skips, classifier) breaks the budget."""
    if not task.budget.is_set:
        return
    plan = space.plan(net_cfg)
    macs, params = plan.costs(torch.zeros(1, plan.num_channels, dtype=torch.bool))
    floor = {"macs": float(macs[0]), "params": float(params[0])}
    over = task.budget.violations(floor)
    if over:
        raise BudgetError(f"no network of {space.name} {net_cfg} fits the budget: even with every searched "
                          f"channel dropped, {'; '.join(over)}; raise the budget or use a smaller supernet")


class PosteriorSearch:
    """One-shot NAS through a posteriori distribution guided sampling (Zhou et al., AAAI 2020)."""

    name: ClassVar[str] = "posterior-nas"
    budget_kinds: ClassVar[tuple[str, ...]] = ("macs", "params")
    config_cls: ClassVar[type] = PosteriorConfig

    def search(self, task: Task, config: PosteriorConfig, run: Run) -> SearchResult:
        dev = task.device
        space = get_supnet_space(config.space)
        net_cfg = supernet_net(config, task)
        train_split, held_split = task.dataset.train.split(1.0 - config.val_fraction, seed=task.seed)
        _check_budget_feasible(space, net_cfg, task)
        net: SupNet = space.supernet(net_cfg, p_init=config.p_init, temperature=config.temperature).to(dev)
        gates = list(net.gates.values())
        p_params = [g.p_logit for g in gates]
        p_ids = {id(p) for p in p_params}
        weights = [p for p in net.parameters() if id(p) not in p_ids]
        opt = torch.optim.SGD([{"params": weights, "lr": config.lr},
                               {"params": p_params, "lr": config.lr * config.p_lr_mult}],
                              lr=config.lr, momentum=config.momentum, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.epochs),
                                                           eta_min=config.lr_min)
        start = 0
        state = run.restore(map_location=dev)
        if state is not None:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start = int(state["epoch"])

        # a training split smaller than one batch (micro runs) still trains: keep its last, partial batch
        loader = make_loader(train_split, config.batch_size, train=True, device=dev, cutout=config.cutout,
                             seed=task.seed, drop_last=len(train_split) >= config.batch_size)
        held_loader = make_loader(held_split, config.batch_size, train=False, device=dev)
        held = list(held_loader) if held_split.in_memory else held_loader  # small sets: batches cut once
        l2, N = config.resolved_l2(), config.resolved_N()
        reg = Regulariser(gates, l2, N, config.regulariser)
        t0 = time.time()
        for epoch in range(start, config.epochs):
            loader.set_epoch(epoch)
            net.train()
            ce_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev)
            seen = 0
            for x, y in run.progress(loader, desc=f"epoch {epoch + 1}/{config.epochs}", total=len(loader)):
                logits = net(x)
                ce = F.cross_entropy(logits, y)
                loss = ce + reg()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                ce_sum += ce.detach() * y.shape[0]
                correct += (logits.detach().argmax(1) == y).sum()
                seen += int(y.shape[0])
            sched.step()
            p = net.drop_rates().detach()
            run.log(epoch + 1, train_loss=ce_sum / max(seen, 1), train_acc=correct / max(seen, 1),
                    reg=reg().detach(), p_mean=p.mean(), p_min=p.min(),
                    p_max=p.max(), lr=sched.get_last_lr()[0], time_s=time.time() - t0)
            run.checkpoint({"model": net.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "config": config.to_dict()}, epoch + 1)

        return self._sample(net, space, net_cfg, held, task, config, run)

    def _sample(self, net: SupNet, space: Any, net_cfg: dict[str, Any], held: Any, task: Task,
                config: PosteriorConfig, run: Run) -> SearchResult:
        """Posterior-guided sampling (and the uniform baseline): the best mask becomes the result."""
        dev = task.device
        plan = net.plan
        rates = channel_rates(net)
        budget = task.budget if task.budget.is_set else None
        C = config.num_samples
        t0 = time.time()
        gen = torch.Generator(device=dev).manual_seed(task.seed * 1_000_003 + 11)
        draw = draw_masks(plan, rates, C, gen, budget, max_draws=config.max_draws_factor * C)
        if draw.masks.shape[0] == 0:
            macs, params = plan.costs(draw_masks(plan, rates, 64, gen).masks)
            raise BudgetError(
                f"none of {draw.drawn} masks drawn from the posterior meets the budget {task.budget.to_dict()} "
                f"(their median cost: macs {macs.median():.4g}, params {params.median():.4g}); raise the "
                f"budget, use a smaller supernet (-o width=...), or raise max_draws_factor")
        acc, loss = score_masks(net, draw.masks, held, fold=config.score_batch)
        i = best_index(acc, loss)
        best = draw.masks[i].cpu()
        macs, params = plan.costs(draw.masks)
        metrics: dict[str, Any] = {
            "samples": int(draw.masks.shape[0]), "drawn": draw.drawn, "best_acc": float(acc[i]),
            "best_loss": float(loss[i]), "mean_acc": float(acc.mean()), "best_macs": float(macs[i]),
            "best_params": float(params[i]), "mean_macs": float(macs.mean()), "p_mean": float(rates.mean()),
            "sampling_time_s": time.time() - t0,
        }
        uniform_best = None
        if config.uniform_baseline:
            gen_u = torch.Generator(device=dev).manual_seed(task.seed * 1_000_003 + 29)
            uni = draw_masks(plan, torch.full_like(rates, float(rates.mean())), C, gen_u, budget,
                             max_draws=config.max_draws_factor * C)
            if uni.masks.shape[0]:
                acc_u, loss_u = score_masks(net, uni.masks, held, fold=config.score_batch)
                j = best_index(acc_u, loss_u)  # the same selection rule as the posterior's
                uniform_best = uni.masks[j].cpu()
                metrics.update(uniform_best_acc=float(acc_u[j]), uniform_mean_acc=float(acc_u.mean()),
                               uniform_samples=int(uni.masks.shape[0]))
        run.log(config.epochs, **{f"sampling/{k}": v for k, v in metrics.items()})
        state = {
            "space": space.name, "net": net_cfg, "spec": space.spec_of(best, net_cfg), "best_mask": best,
            "drop_rates": net.drop_rates().detach().cpu(), "groups": list(plan.names),
            "supernet": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        }
        if uniform_best is not None:
            state["uniform_best_mask"] = uniform_best
        return SearchResult(method=self.name, state=state, metrics=metrics, config=config.to_dict())

    def sample_and_score(self, run_dir: str | Path, task: Task, n: int, seed: int = 0) -> list[tuple[Arch, float]]:
        """The harness's ranking hook: n distinct networks drawn from a finished run's posterior, each
        with its held-out accuracy under the inherited weights (for Kendall's tau vs stand-alone)."""
        ckpt = Path(run_dir) / "checkpoints" / "last.pt"
        if not ckpt.exists():
            raise RunError(f"{ckpt} does not exist: give the --out of a finished posterior-nas search")
        state = torch.load(ckpt, map_location=task.device, weights_only=False)
        config = config_from_dict(PosteriorConfig, state["config"])
        space = get_supnet_space(config.space)
        net_cfg = supernet_net(config, task)
        net: SupNet = space.supernet(net_cfg, p_init=config.p_init, temperature=config.temperature).to(task.device)
        net.load_state_dict(state["model"])
        _, held_split = task.dataset.train.split(1.0 - config.val_fraction, seed=task.seed)
        held = list(make_loader(held_split, config.batch_size, train=False, device=task.device))
        gen = torch.Generator(device=task.device).manual_seed(seed * 1_000_003 + 47)
        draws = net.plan.effective(draw_masks(net.plan, channel_rates(net), 50 * n, gen).masks)
        first: dict[bytes, int] = {}
        for i, row in enumerate(draws.cpu().numpy()):
            first.setdefault(row.tobytes(), i)
        masks = draws[sorted(first.values())[:n]]
        acc, _ = score_masks(net, masks, held, fold=config.score_batch)
        return [(Arch(space.name, space.spec_of(m, net_cfg), net_cfg, method=self.name), float(a))
                for m, a in zip(masks, acc, strict=False)]

    def derive(self, result: SearchResult) -> Arch:
        """The best sampled mask as a physically pruned network of the supernet."""
        s = result.state
        return Arch(space=s["space"], spec=s["spec"], net=s["net"], method=self.name)
