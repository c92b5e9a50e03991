"""The `posterior-nas` method: train the hybrid representation, then posterior-guided sampling.

    1. Train the supernet end to end with concrete dropout on every conv's input channels (one drop
       rate per group) and the loss CE + regulariser (Eq. 15, no weight decay): this fits the
       variational posterior over architectures (drop rates) and weights jointly.
    2. Draw C hard masks from the learned drop rates; reject those over the budget before scoring;
       score each with the inherited weights on held-out data (no fine-tuning); keep the best.
    3. The best sub-network with the weights it inherits from the supernet is the run's model (the
       paper's protocol: its numbers are these networks, not fine-tuned or retrained), so `nas eval`
       gives the paper's number; `finetune_epochs` fine-tunes it first, `nas train arch.json` retrains it.
    4. Optionally, the same with C uniform masks at the posterior's mean drop rate (a baseline), and
       `drop_rates=fixed`: the paper's "Random" baseline (a supernet trained with predefined, fixed
       dropout, sampled at that rate).

The recipe (supernet, l2, N, C, schedule) follows the data set, as in the paper: CIFAR-10, CIFAR-100 or
ImageNet (`recipe=auto`), and any field set explicitly wins.

Under torchrun every rank trains the same supernet on its shard of each global batch (DDP: the drop-rate
logits live inside the supernet, so their gradients are averaged with the weights'); the C masks are
drawn on rank 0 and given to every rank, each rank scores its share of them on the whole held-out part,
and every rank then holds every score, so all pick the same winner.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from nas_common import dist
from nas_common.arch import Arch
from nas_common.config import Config
from nas_common.context import SearchContext
from nas_common.data import Split, make_loader
from nas_common.errors import BudgetError, ConfigError, DataError
from nas_common.methods import SearchMethod, SearchResult, Task
from nas_common.oneshot import Accumulator
from nas_common.runs import Run

from .gates import Regulariser
from .recipes import L2, RECIPES, Recipe
from .sampling import best_index, channel_rates, draw_masks, score_masks
from .spaces import get_supnet_space
from .supernets import SupNet, inherit_weights

log = logging.getLogger(__name__)

def dataset_recipe(task: Task) -> Recipe:
    """The paper's recipe for the task's data: images larger than 64 pixels are ImageNet-like (ImageFolder
    data, ImageNet included), 100 classes CIFAR-100, anything else CIFAR-10 (cifar10, cifar10-mini, svhn,
    npz arrays)."""
    if min(task.input_shape[-2:]) > 64:
        return "imagenet"
    return "cifar100" if task.num_classes == 100 else "cifar10"


@dataclass(frozen=True)
class PosteriorConfig(Config):
    """Posterior-guided one-shot NAS. Defaults: the paper (supplementary), by data set: fields left None take
    the recipe's value (`RECIPES`, `L2`), `recipe=auto` picks it from the data (`dataset_recipe`)."""

    recipe: Literal["auto", "cifar10", "cifar100", "imagenet"] = "auto"
    space: Literal["supnet-m", "supnet-mi", "supnet-r"] | None = None  # None: MI (CIFAR), R (ImageNet)
    width: int | None = None  # supernet base width; None: the space's (M 96, MI 160, R 64)
    blocks: tuple[int, ...] | None = None  # blocks per stage; None: the space's ([4,4,4] / [3,4,6,3])
    stem: int | None = None  # SupNet-M/MI stem channels; None: 16
    stem_stride: int = 1  # SupNet-M/MI stem stride: 1 is the paper; 2 quarters the cost (CPU variants)
    # hybrid representation (concrete dropout on conv input channels)
    drop_rates: Literal["learned", "fixed"] = "learned"  # fixed: the paper's "Random" baseline, p stays p_init
    temperature: float = 0.2
    p_init: float = 0.1
    l2: float | None = None  # prior precision l^2; None: the recipe's (C10 M 50, MI 150; C100 2500; R 80)
    N: float | None = None  # data-set size scale of the KL term; None: 5e5 (CIFAR), 1.2e6 (ImageNet)
    regulariser: Literal["paper", "concrete"] = "paper"
    # training
    epochs: int | None = None  # None: 1800 (CIFAR), 90 (ImageNet)
    batch_size: int | None = None  # the global batch (split over ranks); None: 128 (CIFAR), 256 (ImageNet)
    lr: float | None = None  # None: 0.01 (CIFAR), 0.1 (ImageNet)
    lr_schedule: Literal["cosine", "step"] | None = None  # None: cosine (CIFAR), step (ImageNet)
    lr_min: float = 0.0  # cosine: the final learning rate
    lr_step: int = 30  # step: divide the learning rate by 1/lr_gamma every lr_step epochs
    lr_gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool | None = None  # None: False (CIFAR, not stated), True (ImageNet)
    p_lr_mult: float = 1.0  # learning-rate multiplier of the drop-rate logits (1 = the paper)
    cutout: int | None = None  # None: 16 (CIFAR), 0 (ImageNet)
    val_fraction: float = 0.1  # held-out part of the training split, for scoring masks
    # sampling
    num_samples: int | None = None  # C; None: 1500 (CIFAR-10, ImageNet), 5000 (CIFAR-100)
    max_draws_factor: int = 50  # with a budget: draw at most this many x C masks looking for C that fit
    score_batch: int = 1000  # folded batch when scoring (masks x images per forward)
    uniform_baseline: bool = True  # also score C uniform masks at the posterior's mean drop rate
    # the run's model: the best sub-network with its inherited weights, fine-tuned for this many epochs first
    finetune_epochs: int = 0  # 0: the paper's protocol (no fine-tuning)
    finetune_lr: float | None = None  # None: the search's lr (cosine to 0 over the fine-tuning epochs)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        "tiny": {"space": "supnet-m", "width": 8, "blocks": (1, 1, 1), "stem": 8, "stem_stride": 2, "epochs": 40,
                 "batch_size": 64, "lr": 0.05, "N": 4e3, "p_lr_mult": 5.0, "cutout": 0, "num_samples": 100,
                 "score_batch": 500, "val_fraction": 0.2},
    }

    def __post_init__(self) -> None:
        for name in ("temperature", "N", "l2", "lr", "batch_size", "epochs", "num_samples", "score_batch",
                     "lr_step", "finetune_lr"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                hint = (": an untrained supernet has no posterior to sample from (the paper trains 1800 epochs)"
                        if name == "epochs" else "")
                raise ConfigError(f"{name}={v!r} must be positive{hint}")
        if not 0.0 < self.p_init < 1.0:
            raise ConfigError(f"p_init={self.p_init!r} must be in (0, 1) (the paper uses 0.1)")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction!r} must be in (0, 1)")
        if self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs={self.finetune_epochs!r} must be 0 (no fine-tuning) or positive")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise ConfigError(f"lr_gamma={self.lr_gamma!r} must be in (0, 1] (the paper divides by 10: 0.1)")

    def resolve(self, task: Task) -> PosteriorConfig:
        """This config with every field left None set from the recipe of the task's data (or `recipe`)."""
        recipe = dataset_recipe(task) if self.recipe == "auto" else self.recipe
        filled = {k: v for k, v in RECIPES[recipe].items() if getattr(self, k) is None}
        space = self.space or filled["space"]
        if self.l2 is None:
            filled["l2"] = L2[recipe][space]
        return self.replace(recipe=recipe, **filled)


def supernet_net(config: PosteriorConfig, task: Task) -> dict[str, Any]:
    """The `net` dict of the supernet: the space's defaults, the config's shape, the task's data."""
    space = get_supnet_space(config.space or config.resolve(task).space)
    net = {**space.default_net, "num_classes": task.num_classes, "input": list(task.input_shape)}
    if config.width is not None:
        net["width"] = config.width
    if config.blocks is not None:
        net["blocks"] = list(config.blocks)
    if config.stem is not None:
        if "stem" not in net:
            raise ConfigError(f"stem applies to supnet-m/supnet-mi, not {space.name}: remove it (-o stem=none; "
                              f"the tiny preset sets it)")
        net["stem"] = config.stem
    if config.stem_stride != 1:
        if "stem_stride" not in net:
            raise ConfigError(f"stem_stride applies to supnet-m/supnet-mi, not {space.name}: remove it "
                              f"(-o stem_stride=1; the tiny preset sets 2)")
        net["stem_stride"] = config.stem_stride
    return space.validate_net(net)


def split_held_out(task: Task, config: PosteriorConfig) -> tuple[Split, Split]:
    """The training part and the held-out part (`val_fraction` of the training split, seeded by the
    task): the supernet trains on the first, masks are scored on the second."""
    return task.dataset.train.split(1.0 - config.val_fraction, seed=task.seed)


def held_out_split(task: Task, config: PosteriorConfig) -> tuple[Split, Split, dict[str, Any]]:
    """`split_held_out` and the held-out part's fingerprint (`Split.fingerprint`: its size and a digest of
    its labels and images), which every checkpoint records so that a later scoring can check it reads
    the same images."""
    train, held = split_held_out(task, config)
    return train, held, held.fingerprint()


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


def _scheduler(opt: torch.optim.Optimizer, config: PosteriorConfig, epochs: int, eta_min: float
               ) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: cosine to `eta_min` without restarts (CIFAR) or lr x gamma every lr_step epochs."""
    if config.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_step, gamma=config.lr_gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=eta_min)


def train_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
               reg: Regulariser | None = None, acc: Accumulator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on CE (+ the regulariser); adds the batch to `acc` and returns the batch's summed CE
    and correct count, detached, on the device: no host-device sync (the epoch's sums are read once,
    after the epoch)."""
    logits = net(x)
    ce = F.cross_entropy(logits, y)
    loss = ce if reg is None else ce + reg()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if acc is not None:
        acc.add_batch(logits, y, loss=ce)
    return ce.detach() * y.shape[0], (logits.detach().argmax(1) == y).sum()


def finetune(model: nn.Module, train: Split, config: PosteriorConfig, task: Task, epochs: int | None = None,
             run: Run | None = None, ctx: SearchContext | None = None) -> nn.Module:
    """Fine-tune a sub-network with inherited weights on the training part: CE only, SGD with the search's
    momentum (and Nesterov), no weight decay, cosine from `finetune_lr` (default: the search's lr) to 0;
    data-parallel under torchrun (the batch is the search's global batch). The paper's "w/ FT" rows; its
    own results are not fine-tuned."""
    epochs = config.finetune_epochs if epochs is None else epochs
    ctx = ctx or task.context
    dev = ctx.device
    model = model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=config.finetune_lr or config.lr, momentum=config.momentum,
                          nesterov=bool(config.nesterov), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    ddp = ctx.wrap(model, find_unused_parameters=False)  # a pruned network uses every parameter
    loader = ctx.loader(train, ctx.per_rank_batch(config.batch_size), train=True, cutout=config.cutout,
                        seed=task.seed + 1, drop_last=len(train) >= config.batch_size)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        ddp.train()
        acc = Accumulator(dev)
        for x, y in loader:
            with ctx.step():
                train_step(ddp, x, y, opt, acc=acc)
        sched.step()
        if run is not None:
            stats = acc.compute(reduce_ranks=True)
            run.log(config.epochs + epoch + 1, **{"search/finetune_loss": stats["loss"],
                                                  "search/finetune_top1": stats["top1"]})
    ctx.sync_buffers(model)  # rank 0's BatchNorm statistics everywhere (each rank saw its own shard)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, batches: Any) -> float:
    """Top-1 accuracy (a fraction) of a (pruned) network on (x, y) batches; read once, at the end."""
    model.eval()
    acc: Accumulator | None = None
    for x, y in batches:
        acc = acc or Accumulator(y.device)
        acc.add_batch(model(x), y)
    return acc.compute()["top1"] if acc is not None else 0.0


def score_on_ranks(ctx: SearchContext, net: SupNet, masks: torch.Tensor, held: Any, fold: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """`score_masks` with the masks shared out over the ranks (each scores its contiguous share on the
    whole held-out part) and every score given to every rank, in the masks' order."""
    if not ctx.distributed:
        return score_masks(net, masks, held, fold=fold)
    mine = torch.tensor_split(masks, ctx.world_size)[ctx.rank]
    acc, loss = score_masks(net, mine, held, fold=fold)
    parts = dist.gather_objects((acc.cpu(), loss.cpu()))
    return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])


class PosteriorSearch(SearchMethod):
    """One-shot NAS through a posteriori distribution guided sampling (Zhou et al., AAAI 2020)."""

    name: ClassVar[str] = "posterior-nas"
    spaces = ("supnet-m", "supnet-mi", "supnet-r")
    budget_kinds: ClassVar[tuple[str, ...]] = ("macs", "params")
    config_cls: ClassVar[type] = PosteriorConfig

    # ---- every refusal, before the run directory exists -------------------------------------------
    def check(self, task: Task, config: PosteriorConfig) -> None:
        """Refuse, before anything is written: a budget on another cost (the base class), a config that
        does not fit the task's data (a supernet option of another space, a batch the ranks cannot
        share), a held-out split that leaves either part empty, and a budget that even the smallest
        network of the supernet breaks. The recipe is resolved for the task's data first, as `search`
        resolves it."""
        super().check(task, config)
        cfg = config.resolve(task)
        space = get_supnet_space(cfg.space)
        net_cfg = supernet_net(cfg, task)
        world = task.context.world_size
        task.context.per_rank_batch(cfg.batch_size)  # the global batch: refused unless the ranks share it
        n = len(task.dataset.train)
        n_train = int(n * (1.0 - cfg.val_fraction))
        if n_train == 0 or n_train == n:
            part = "training" if n_train == 0 else "held-out"
            raise DataError(f"val_fraction={cfg.val_fraction} of {task.dataset.name}'s {n} training images leaves "
                            f"the {part} part empty: the supernet trains on one part and masks are scored on the "
                            f"other; use more training images or another val_fraction (e.g. -o val_fraction=0.2)")
        if n_train < world:
            raise DataError(f"the training part has {n_train} images, fewer than the {world} ranks: use more data "
                            f"or fewer ranks")
        _check_budget_feasible(space, net_cfg, task)

    # ---- the search ------------------------------------------------------------------------------
    def search(self, task: Task, config: PosteriorConfig, run: Run) -> SearchResult:
        config = config.resolve(task)
        ctx = task.context
        dev = ctx.device
        space = get_supnet_space(config.space)
        net_cfg = supernet_net(config, task)
        train_split, held_split = split_held_out(task, config)
        held_print = held_split.fingerprint()
        net: SupNet = space.supernet(net_cfg, p_init=config.p_init, temperature=config.temperature).to(dev)
        if config.drop_rates == "fixed":
            net.fix_drop_rates()
        gates = list(net.gates.values())
        p_params = [g.p_logit for g in gates]
        p_ids = {id(p) for p in p_params}
        weights = [p for p in net.parameters() if id(p) not in p_ids]
        groups = [{"params": weights, "lr": config.lr}]
        if config.drop_rates == "learned":
            groups.append({"params": p_params, "lr": config.lr * config.p_lr_mult})
        opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=bool(config.nesterov),
                              weight_decay=0.0)  # none: the l2 term of the regulariser replaces it
        sched = _scheduler(opt, config, config.epochs, config.lr_min)
        components = {"model": {"supernet": net}, "optimizers": {"sgd": opt}, "schedulers": {"lr": sched}}
        got = run.resume(**components, map_location=dev)
        start = 0
        if got is not None:
            saved = got.extra.get("held_out")
            if saved != held_print:
                raise ConfigError(f"cannot resume: the task's held-out split ({held_print['images']} images) is not "
                                  f"the one this search held out ({(saved or {}).get('images')}); resume with "
                                  f"the same data and seed, or pass --overwrite to start again")
            start = got.epoch
        # every parameter takes part in every training forward (dropout scales inputs, nothing is
        # skipped), so DDP need not look for unused ones; the regulariser reads the same parameters
        # outside the forward, and DDP averages the sum of both gradients
        model = ctx.wrap(net, find_unused_parameters=False)
        # a training split smaller than one batch (micro runs) still trains: keep its last, partial batch
        loader = ctx.loader(train_split, ctx.per_rank_batch(config.batch_size), train=True, cutout=config.cutout,
                            seed=task.seed, drop_last=len(train_split) >= config.batch_size)
        reg = Regulariser(gates, config.l2, config.N, config.regulariser)
        t0 = time.time()
        for epoch in range(start, config.epochs):
            loader.set_epoch(epoch)
            model.train()
            acc = Accumulator(dev)
            for x, y in run.progress(loader, desc=f"epoch {epoch + 1}/{config.epochs}", total=len(loader)):
                with ctx.step():
                    train_step(model, x, y, opt, reg, acc)
            sched.step()
            stats = acc.compute(reduce_ranks=True)
            p = net.drop_rates().detach()
            run.log(epoch + 1, **{
                "train/loss": stats["loss"], "train/top1": stats["top1"], "search/regulariser": reg().detach(),
                "search/p_mean": p.mean(), "search/p_min": p.min(), "search/p_max": p.max(),
                "search/lr": sched.get_last_lr()[0], "search/time_s": time.time() - t0})
            run.save_state(epoch + 1, **components, extra={"held_out": held_print})

        # each rank updated its BatchNorm statistics on its own shard: score with rank 0's everywhere
        ctx.sync_buffers(net)
        held_loader = make_loader(held_split, config.batch_size, train=False, device=dev, distributed=False)
        held = list(held_loader) if held_split.in_memory else held_loader  # small sets: batches cut once
        result = self._sample(ctx, net, space, net_cfg, held, task, config, run)
        result.state["held_out"] = held_print
        result.metrics["held_out_images"] = held_print["images"]
        model_out = self._inherited_model(result, net)
        if config.finetune_epochs:
            model_out = finetune(model_out, train_split, config, task, run=run, ctx=ctx)
            result.metrics["finetuned_acc"] = accuracy(model_out, held)
        result.metrics["model"] = "finetuned" if config.finetune_epochs else "inherited"
        result.model = model_out.cpu()
        return result

    def _inherited_model(self, result: SearchResult, net: SupNet) -> nn.Module:
        """The best sub-network exactly as `derive(result).build()` builds it, with the weights it inherits
        from the supernet (sliced to its kept channels, BatchNorm statistics included): the network that
        was scored, as a physically pruned module."""
        arch = self.derive(result)
        space = get_supnet_space(arch.space)
        keep = net.plan.keep_of(space.mask_of(arch.spec, arch.net))
        return inherit_weights(arch.build().to(next(net.parameters()).device), net, keep).eval()

    def _sample(self, ctx: SearchContext, net: SupNet, space: Any, net_cfg: dict[str, Any], held: Any, task: Task,
                config: PosteriorConfig, run: Run) -> SearchResult:
        """Posterior-guided sampling (and the uniform baseline): the best mask becomes the result. The
        masks are drawn on rank 0 and given to every rank; the ranks share the scoring."""
        dev = ctx.device
        plan = net.plan
        rates = channel_rates(net)
        budget = task.budget if task.budget.is_set else None
        C = config.num_samples
        max_draws = config.max_draws_factor * C
        t0 = time.time()

        def draw(seed_offset: int, channel_rates_: torch.Tensor) -> tuple[torch.Tensor, int]:
            gen = torch.Generator(device=dev).manual_seed(task.seed * 1_000_003 + seed_offset)
            d = draw_masks(plan, channel_rates_, C, gen, budget, max_draws=max_draws)
            return d.masks, d.drawn

        masks, drawn = ctx.decide(draw, 11, rates)
        if masks.shape[0] == 0:
            costs = plan.costs(draw_masks(plan, rates, 64, torch.Generator(device=dev).manual_seed(task.seed)).masks)
            macs, params = (c.median().item() for c in costs)
            raise BudgetError(
                f"none of {drawn} masks drawn from the posterior meets the budget {task.budget.to_dict()} "
                f"(their median cost: macs {macs:.4g}, params {params:.4g}); raise the budget, use a smaller "
                f"supernet (-o width=...), or raise max_draws_factor")
        acc, loss = score_on_ranks(ctx, net, masks, held, config.score_batch)
        i = best_index(acc, loss)
        best = masks[i].cpu()
        macs, params = plan.costs(masks)
        metrics: dict[str, Any] = {
            "recipe": config.recipe, "drop_rates": config.drop_rates,
            "samples": int(masks.shape[0]), "drawn": drawn, "best_acc": float(acc[i]),
            "best_loss": float(loss[i]), "mean_acc": float(acc.mean()), "best_macs": float(macs[i]),
            "best_params": float(params[i]), "mean_macs": float(macs.mean()), "p_mean": float(rates.mean()),
            "sampling_time_s": time.time() - t0,
        }
        uniform_best = None
        # with fixed drop rates every channel already has the same rate: the uniform baseline is the same draw
        if config.uniform_baseline and config.drop_rates == "learned":
            uni, _ = ctx.decide(draw, 29, torch.full_like(rates, float(rates.mean())))
            if uni.shape[0]:
                acc_u, loss_u = score_on_ranks(ctx, net, uni, held, config.score_batch)
                j = best_index(acc_u, loss_u)  # the same selection rule as the posterior's
                uniform_best = uni[j].cpu()
                metrics.update(uniform_best_acc=float(acc_u[j]), uniform_mean_acc=float(acc_u.mean()),
                               uniform_samples=int(uni.shape[0]))
        run.log(config.epochs, **{f"search/{k}": v for k, v in metrics.items()})
        if ctx.is_main:
            log.info("posterior-guided sampling: best of %d masks (%d drawn) has held-out top-1 %.4f, %.4g MACs, "
                     "%.4g params (mean drop rate %.3f)%s", metrics["samples"], drawn, metrics["best_acc"],
                     metrics["best_macs"], metrics["best_params"], metrics["p_mean"],
                     f"; uniform best {metrics['uniform_best_acc']:.4f}" if "uniform_best_acc" in metrics else "")
        # the search state: architecture parameters and decisions only, the same on every rank (the
        # supernet's weights are in the checkpoint)
        state = {
            "space": space.name, "net": net_cfg, "spec": space.spec_of(best, net_cfg), "best_mask": best,
            "drop_rates": net.drop_rates().detach().cpu(), "groups": list(plan.names),
        }
        if uniform_best is not None:
            state["uniform_best_mask"] = uniform_best
        return SearchResult(method=self.name, state=state, metrics=metrics, config=config.to_dict())

    # ---- reading a finished search back ----------------------------------------------------------
    def load_supernet(self, run_dir: str | Path, task: Task) -> tuple[SupNet, PosteriorConfig, dict[str, Any]]:
        """The trained supernet of a finished search in `run_dir`, its resolved config and the held-out
        fingerprint, after checking that the task is the search's: same data set and seed (the held-out
        split depends on both) and a held-out split with the same images. One-line errors otherwise."""
        run = Run.open(run_dir, method=self.name, task=task)  # the method, the dataset's name and the seed
        config = run.config(PosteriorConfig).resolve(task)
        space = get_supnet_space(config.space)
        net: SupNet = space.supernet(supernet_net(config, task), p_init=config.p_init,
                                     temperature=config.temperature).to(task.device)
        extra = run.load_final(config.epochs, model={"supernet": net}, map_location=task.device)
        _, held = split_held_out(task, config)
        saved = extra.get("held_out") or {}
        if held.fingerprint() != saved:
            raise ConfigError(
                f"the task's data differ from the search's in {str(run_dir)!r}: its held-out split "
                f"({len(held)} images) is not the one the search held out ({saved.get('images')} images), so "
                f"the scores would count images the supernet was trained on; pass the same data set (and "
                f"subset) and seed as the search")
        return net, config, saved

    def sample_and_score(self, run_dir: str | Path, task: Task, n: int, seed: int = 0) -> list[tuple[Arch, float]]:
        """The harness's ranking hook: n distinct networks drawn from a finished run's posterior, each
        with its accuracy under the inherited weights on the search's own held-out split (for Kendall's
        tau vs stand-alone). Refuses a task whose data or seed differ from the search's."""
        net, config, _ = self.load_supernet(run_dir, task)
        space = get_supnet_space(config.space)
        net_cfg = supernet_net(config, task)
        _, held_split = split_held_out(task, config)
        held = list(make_loader(held_split, config.batch_size, train=False, device=task.device, distributed=False))
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
