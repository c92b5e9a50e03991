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
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from nas_common.arch import Arch
from nas_common.config import Config, config_from_dict
from nas_common.data import Split, make_loader
from nas_common.errors import BudgetError, ConfigError
from nas_common.methods import SearchMethod, SearchResult, Task
from nas_common.runs import Run, load_final_checkpoint, read_search_record

from .gates import Regulariser
from .sampling import best_index, channel_rates, draw_masks, score_masks
from .spaces import get_supnet_space
from .supernets import SupNet, inherit_weights

Recipe = Literal["cifar10", "cifar100", "imagenet"]

RECIPES: dict[str, dict[str, Any]] = {
    # supplementary §1.1: SupNet-M/MI, SGD lr 0.01 cosine without restarts, 1800 epochs, batch 128, cutout 16,
    # N 5e5; paper §3: C = 1500 (CIFAR-10), 5000 (CIFAR-100). Momentum and Nesterov are not stated for CIFAR.
    "cifar10": {"space": "supnet-mi", "N": 5e5, "num_samples": 1500, "epochs": 1800, "batch_size": 128, "lr": 0.01,
                "lr_schedule": "cosine", "nesterov": False, "cutout": 16},
    "cifar100": {"space": "supnet-mi", "N": 5e5, "num_samples": 5000, "epochs": 1800, "batch_size": 128, "lr": 0.01,
                 "lr_schedule": "cosine", "nesterov": False, "cutout": 16},
    # supplementary §1.2: SupNet-R-50, 90 epochs, lr 0.1 divided by 10 every 30, batch 256, SGD with Nesterov
    # momentum 0.9, no weight decay, N 1.2e6; paper §3: C = 1500.
    "imagenet": {"space": "supnet-r", "N": 1.2e6, "num_samples": 1500, "epochs": 90, "batch_size": 256, "lr": 0.1,
                 "lr_schedule": "step", "nesterov": True, "cutout": 0},
}
"""The paper's recipe per data set: the defaults of every field left unset (None)."""

L2: dict[str, dict[str, float]] = {
    # published (supplementary): C10 M 50, MI 150; C100 MI 2500; ImageNet R-50 80. The rest take the value
    # published for the same data set (C100) or the same supernet (the others).
    "cifar10": {"supnet-m": 50.0, "supnet-mi": 150.0, "supnet-r": 80.0},
    "cifar100": {"supnet-m": 2500.0, "supnet-mi": 2500.0, "supnet-r": 2500.0},
    "imagenet": {"supnet-m": 50.0, "supnet-mi": 150.0, "supnet-r": 80.0},
}
"""The prior precision l^2 per recipe and supernet."""


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
    batch_size: int | None = None  # None: 128 (CIFAR), 256 (ImageNet)
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
            if v is not None and not v > 0 and not (name == "epochs" and v == 0):
                raise ConfigError(f"{name}={v!r} must be positive")
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
            raise ConfigError(f"stem applies to supnet-m/supnet-mi, not {space.name}: remove it")
        net["stem"] = config.stem
    if config.stem_stride != 1:
        if "stem_stride" not in net:
            raise ConfigError(f"stem_stride applies to supnet-m/supnet-mi, not {space.name}: remove it")
        net["stem_stride"] = config.stem_stride
    return space.validate_net(net)


def held_out_split(task: Task, config: PosteriorConfig) -> tuple[Split, Split, dict[str, Any]]:
    """The training part, the held-out part (`val_fraction` of the training split, seeded by the task) and a
    fingerprint of the held-out part (its size and a digest of its labels and images, or of its items'
    indices for data on disk), so that a later scoring can check it reads the same images."""
    train, held = task.dataset.train.split(1.0 - config.val_fraction, seed=task.seed)
    h = hashlib.sha256()
    h.update(held.y.to(torch.int64).numpy().tobytes())
    if held.in_memory:
        h.update(held.x.contiguous().numpy().tobytes())
    elif held.indices is not None:
        h.update(held.indices.to(torch.int64).numpy().tobytes())
    return train, held, {"images": len(held), "digest": h.hexdigest()}


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
               reg: Regulariser | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on CE (+ the regulariser); returns the batch's summed CE and correct count, detached, on
    the device: no host-device sync (the epoch's sums are read once, after the epoch)."""
    logits = net(x)
    ce = F.cross_entropy(logits, y)
    loss = ce if reg is None else ce + reg()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return ce.detach() * y.shape[0], (logits.detach().argmax(1) == y).sum()


def finetune(model: nn.Module, train: Split, config: PosteriorConfig, task: Task, epochs: int | None = None,
             run: Run | None = None) -> nn.Module:
    """Fine-tune a sub-network with inherited weights on the training part: CE only, SGD with the search's
    momentum (and Nesterov), no weight decay, cosine from `finetune_lr` (default: the search's lr) to 0.
    The paper's "w/ FT" rows; its own results are not fine-tuned."""
    epochs = config.finetune_epochs if epochs is None else epochs
    dev = task.device
    model = model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=config.finetune_lr or config.lr, momentum=config.momentum,
                          nesterov=bool(config.nesterov), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    loader = make_loader(train, config.batch_size, train=True, device=dev, cutout=config.cutout,
                         seed=task.seed + 1, drop_last=len(train) >= config.batch_size)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        ce_sum = torch.zeros((), device=dev)
        seen = 0
        for x, y in loader:
            ce, _ = train_step(model, x, y, opt)
            ce_sum += ce
            seen += y.shape[0]
        sched.step()
        if run is not None:
            run.log(config.epochs + epoch + 1, finetune_loss=ce_sum / max(seen, 1))
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, batches: Any) -> float:
    """Top-1 accuracy of a (pruned) network on (x, y) batches; the count is read once, at the end."""
    model.eval()
    hits = torch.zeros((), dtype=torch.long)
    total = 0
    for x, y in batches:
        hits = hits.to(y.device) + (model(x).argmax(1) == y).sum()
        total += y.shape[0]
    return int(hits) / max(total, 1)


class PosteriorSearch(SearchMethod):
    """One-shot NAS through a posteriori distribution guided sampling (Zhou et al., AAAI 2020)."""

    name: ClassVar[str] = "posterior-nas"
    spaces = ("supnet-m", "supnet-mi", "supnet-r")
    budget_kinds: ClassVar[tuple[str, ...]] = ("macs", "params")
    config_cls: ClassVar[type] = PosteriorConfig

    def search(self, task: Task, config: PosteriorConfig, run: Run) -> SearchResult:
        config = config.resolve(task)
        dev = task.device
        space = get_supnet_space(config.space)
        net_cfg = supernet_net(config, task)
        train_split, held_split, held_print = held_out_split(task, config)
        _check_budget_feasible(space, net_cfg, task)
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
        start = 0
        state = run.restore(map_location=dev)
        if state is not None:
            if state.get("held_out", held_print) != held_print:
                raise ConfigError(f"cannot resume: the task's held-out split ({held_print['images']} images) is not "
                                  f"the one this search held out ({state['held_out']['images']}); resume with "
                                  f"the same data and seed, or pass --overwrite to start again")
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start = int(state["epoch"])

        # a training split smaller than one batch (micro runs) still trains: keep its last, partial batch
        loader = make_loader(train_split, config.batch_size, train=True, device=dev, cutout=config.cutout,
                             seed=task.seed, drop_last=len(train_split) >= config.batch_size)
        held_loader = make_loader(held_split, config.batch_size, train=False, device=dev)
        held = list(held_loader) if held_split.in_memory else held_loader  # small sets: batches cut once
        reg = Regulariser(gates, config.l2, config.N, config.regulariser)
        t0 = time.time()
        for epoch in range(start, config.epochs):
            loader.set_epoch(epoch)
            net.train()
            ce_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev, dtype=torch.long)
            seen = 0
            for x, y in run.progress(loader, desc=f"epoch {epoch + 1}/{config.epochs}", total=len(loader)):
                ce, hits = train_step(net, x, y, opt, reg)
                ce_sum += ce
                correct += hits
                seen += y.shape[0]
            sched.step()
            p = net.drop_rates().detach()
            run.log(epoch + 1, train_loss=ce_sum / max(seen, 1), train_acc=correct / max(seen, 1),
                    reg=reg().detach(), p_mean=p.mean(), p_min=p.min(), p_max=p.max(), lr=sched.get_last_lr()[0],
                    time_s=time.time() - t0)
            run.checkpoint({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                            "config": config.to_dict(), "held_out": held_print}, epoch + 1)

        result = self._sample(net, space, net_cfg, held, task, config, run)
        result.state["held_out"] = held_print
        result.metrics["held_out_images"] = held_print["images"]
        model = self._inherited_model(result, net)
        if config.finetune_epochs:
            model = finetune(model, train_split, config, task, run=run)
            result.metrics["finetuned_acc"] = accuracy(model, held)
        result.metrics["model"] = "finetuned" if config.finetune_epochs else "inherited"
        result.model = model.cpu()
        return result

    def _inherited_model(self, result: SearchResult, net: SupNet) -> nn.Module:
        """The best sub-network exactly as `derive(result).build()` builds it, with the weights it inherits
        from the supernet (sliced to its kept channels, BatchNorm statistics included): the network that
        was scored, as a physically pruned module."""
        arch = self.derive(result)
        space = get_supnet_space(arch.space)
        keep = net.plan.keep_of(space.mask_of(arch.spec, arch.net))
        return inherit_weights(arch.build().to(next(net.parameters()).device), net, keep).eval()

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
            "recipe": config.recipe, "drop_rates": config.drop_rates,
            "samples": int(draw.masks.shape[0]), "drawn": draw.drawn, "best_acc": float(acc[i]),
            "best_loss": float(loss[i]), "mean_acc": float(acc.mean()), "best_macs": float(macs[i]),
            "best_params": float(params[i]), "mean_macs": float(macs.mean()), "p_mean": float(rates.mean()),
            "sampling_time_s": time.time() - t0,
        }
        uniform_best = None
        # with fixed drop rates every channel already has the same rate: the uniform baseline is the same draw
        if config.uniform_baseline and config.drop_rates == "learned":
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

    def load_supernet(self, run_dir: str | Path, task: Task) -> tuple[SupNet, PosteriorConfig, dict[str, Any]]:
        """The trained supernet of a finished search in `run_dir`, its resolved config and the held-out
        fingerprint, after checking that the task is the search's: same data set and seed (the held-out
        split depends on both) and a held-out split with the same images. One-line errors otherwise."""
        record = read_search_record(run_dir, self.name, task)  # the method, the dataset's name and the seed
        config = config_from_dict(PosteriorConfig, record["config"]).resolve(task)
        state = load_final_checkpoint(run_dir, self.name, config.epochs, map_location=task.device,
                                      keys=("model", "config", "held_out"))
        config = config_from_dict(PosteriorConfig, state["config"])
        _, _, held_print = held_out_split(task, config)
        if held_print != state["held_out"]:
            raise ConfigError(
                f"the task's data differ from the search's in {str(run_dir)!r}: its held-out split "
                f"({held_print['images']} images) is not the one the search held out "
                f"({state['held_out']['images']} images), so the scores would count images the supernet was "
                f"trained on; pass the same data set (and subset) and seed as the search")
        space = get_supnet_space(config.space)
        net: SupNet = space.supernet(supernet_net(config, task), p_init=config.p_init,
                                     temperature=config.temperature).to(task.device)
        net.load_state_dict(state["model"])
        return net, config, state["held_out"]

    def sample_and_score(self, run_dir: str | Path, task: Task, n: int, seed: int = 0) -> list[tuple[Arch, float]]:
        """The harness's ranking hook: n distinct networks drawn from a finished run's posterior, each
        with its accuracy under the inherited weights on the search's own held-out split (for Kendall's
        tau vs stand-alone). Refuses a task whose data or seed differ from the search's."""
        net, config, _ = self.load_supernet(run_dir, task)
        space = get_supnet_space(config.space)
        net_cfg = supernet_net(config, task)
        _, held_split, _ = held_out_split(task, config)
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
