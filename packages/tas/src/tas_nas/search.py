"""`TASSearch`: the TAS search loop, its refusals and its final-architecture rule.

Per step (Dong & Yang 2019; the official `search_main_v2`), in `SearchStep`:
  (i)  weights: CE on a train-half batch through a sampled network (K widths per conv, Gumbel-softmax
       depth weights), SGD Nesterov with a cosine schedule (after an optional linear warm-up);
  (ii) architecture: CE on a validation-half batch through a fresh sample + flop_weight * L_FLOP, Adam
       on the width/depth logits only (first order: the weights are not differentiated).
tau anneals from tau_max to tau_min over the epochs (linearly 10 -> 0.1 by default, as the paper says;
the official script's cosine 5 -> 0.1 with `tau_schedule="cosine"`). The halves are a 50/50 per-class
split of the training set. The FLOP target is `task.budget.macs` or `prune_ratio` x the unpruned
MACs, with a band of `flop_tolerance` x the unpruned MACs below it. `check` refuses a target below the
cheapest network the search can derive, before anything is written.

Under torchrun (`task.context`): the searchable network is wrapped in DDP for the weight step, the
architecture step differentiates the unwrapped network and averages the logits' gradients over ranks,
each step's Gumbel noise is rank 0's, and the loaders are sharded (`batch_size` is the global batch), so every
rank ends with the same logits and derives the same network.

Derive: the argmax width per conv and depth per stage (a "resnet"-space Arch), when that net lies in
the FLOP loss's zero band [target - tolerance, target] (the search's own "on target"). Otherwise the
last argmax net the search visited inside that band is returned (the official code also keeps a "best"
config within the tolerance), or, if there was none and the final net is over target + tolerance, the
last visited argmax net under the target. `result.metrics["derived_from"]` says which ("final",
"last-in-band", "last-under-target"); `within_tolerance` is |MACs - target| <= tolerance. The arch's
provenance carries the retraining's KD settings (`kd_alpha`, `kd_temperature`), which
`retrain_with_kd` uses.

Ranking hook: `sample_and_score(run_dir, task, n, seed)` draws distinct hard configurations from the
final width/depth distributions and scores each with the searchable network's shared weights on the
architecture half (see `ranking`), for the harness's Kendall-tau check.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas_common import (
    Arch,
    Budget,
    BudgetError,
    CliOption,
    ConfigError,
    RunError,
    SearchMethod,
    SearchResult,
    Split,
    Task,
    make_loader,
)
from nas_common.context import SearchContext
from nas_common.costs.tables import shapes_macs
from nas_common.runs import Run
from nas_common.spaces.resnet import resnet_conv_shapes

from .config import TASConfig
from .flops import FlopTable, flop_loss
from .model import SearchResNet, base_spec, narrowest_spec, spec_from_indices
from .ops import tau_at
from .ranking import sample_configs, score_configs

log = logging.getLogger(__name__)

__all__ = ["TASSearch", "SearchStep", "build_search_model", "lr_factor", "reachable_macs"]


class TASSearch(SearchMethod):
    """Network pruning via Transformable Architecture Search (NeurIPS 2019) on the "resnet" space."""

    name = "tas"
    spaces = ("resnet",)
    cli_options = (CliOption("--prune-ratio", key="prune_ratio", metavar="R",
                             help="keep this fraction of the base network's MACs (without --budget-macs); "
                                  "= -o prune_ratio=R"),)
    # TAS's FLOP loss prunes for MACs: a budget on any other cost (params included) is refused by check()
    budget_kinds = ("macs",)
    config_cls = TASConfig

    # ---- refusals, before anything is written ------------------------------------------------------
    def check(self, task: Task, config: TASConfig) -> None:
        """Refuse, before the run directory exists: a budget on another cost than MACs (the base class);
        a MACs target (`--budget-macs`, or `prune_ratio` x the base) below the cheapest network TAS can
        derive from the base (`narrowest_spec`: no configuration reaches it, so the whole search would
        run and end over budget); a `batch_size` that the weight or architecture half of the training
        set cannot fill on every rank (a step needs a full batch from each)."""
        super().check(task, config)
        ctx = task.context
        batch = ctx.per_rank_batch(config.batch_size)  # the global batch: refused unless the ranks share it
        train_half, valid_half = _halves(task)
        per_rank = min(len(train_half), len(valid_half)) // ctx.world_size
        ranks = f" per rank ({ctx.world_size} ranks, {batch} images each a step)" if ctx.distributed else ""
        if per_rank < batch:
            fit = per_rank * ctx.world_size
            raise ConfigError(f"batch_size={config.batch_size} is more than the {per_rank} images{ranks} of each "
                              f"half of {task.dataset.name}'s training set (TAS takes its weight and architecture "
                              f"steps on a 50/50 per-class split of it): use -o batch_size={max(1, fit)} or "
                              f"less, or more training images")
        base, lowest = reachable_macs(config, task)
        target, _ = _flop_target(config, task.budget.macs, base)
        if target < lowest:
            dims = {"both": "every conv at its narrowest width and every stage at its smallest depth",
                    "width": "every conv at its narrowest width", "depth": "every stage at its smallest depth"}
            asked = (f"--budget-macs {target:.4g}" if task.budget.macs is not None
                     else f"prune_ratio={config.prune_ratio:g} ({target:.4g} MACs)")
            fix = (f"give --budget-macs {math.ceil(lowest):d} or more" if task.budget.macs is not None
                   else f"use --prune-ratio {math.ceil(lowest / base * 100) / 100:.2f} or more")
            raise BudgetError(f"{asked} is below the cheapest network TAS can derive from {config.base} with mode="
                              f"{config.mode} ({lowest:.4g} MACs: {dims[config.mode]}; the unpruned network has "
                              f"{base:.4g}): {fix}")
        if target >= base and task.context.is_main:
            log.warning("the MACs target %.4g is at or above the unpruned %s's %.4g MACs: TAS will keep the whole "
                        "network", target, config.base, base)

    # ---- the search ------------------------------------------------------------------------------
    def search(self, task: Task, config: TASConfig, run: Run) -> SearchResult:
        ctx = task.context
        device = ctx.device
        model = build_search_model(config, task).to(device)
        table = FlopTable(model).to(device)
        net = ctx.wrap(model)  # DDP under torchrun: every rank starts from rank 0's weights and logits
        ctx.broadcast_params_(model.arch_parameters())
        max_macs = table.max_macs
        target, tol = _flop_target(config, task.budget.macs, max_macs)

        train_half, valid_half = _halves(task)
        held_out = valid_half.fingerprint()  # the ranking hook scores on this half: it checks it is the same
        batch = ctx.per_rank_batch(config.batch_size)  # batch_size is the global batch
        train_loader = ctx.loader(train_half, batch, train=True, augment=config.augment, seed=task.seed)
        valid_loader = ctx.loader(valid_half, batch, train=True, augment=config.augment, seed=task.seed + 1)
        steps = min(len(train_loader), len(valid_loader))
        if config.max_steps_per_epoch:
            steps = min(steps, config.max_steps_per_epoch)

        step = SearchStep(model, table, config, target, tol, net=net, ctx=ctx)
        components = {"model": {"net": net}, "optimizers": step.optimizers(), "schedulers": step.schedulers()}
        got = run.resume(**components, map_location=device)
        start = 0
        if got is not None:
            step.load_tracked(got.extra["tracked"])
            start = got.epoch

        for epoch in range(start, config.epochs):
            tau = tau_at(epoch, config.epochs, config.tau_max, config.tau_min, config.tau_schedule)
            train_loader.set_epoch(epoch)
            valid_loader.set_epoch(epoch)
            net.train()
            sums = torch.zeros(5, device=device)  # train loss, train top1, valid CE, valid top1, flop loss
            batches = zip(range(steps), train_loader, valid_loader, strict=False)
            for _, (xt, yt), (xv, yv) in run.progress(batches, desc=f"tas {epoch + 1}/{config.epochs}",
                                                       total=steps):
                with ctx.step():
                    sums += step(xt, yt, xv, yv, tau)
            lr = step.w_opt.param_groups[0]["lr"]
            step.sched.step()
            ctx.all_reduce_(sums, "mean")  # the epoch's means over every rank's images
            with torch.no_grad():
                e_macs = table(model.width_probs(), model.depth_probs())
                cur = table(*model.argmax_probs())
            vals = (sums / max(1, steps)).tolist()
            metrics = {"train/loss": vals[0], "train/top1": vals[1], "valid/loss": vals[2], "valid/top1": vals[3],
                       "train/lr": lr, "search/flop_loss": vals[4], "search/expected_macs": float(e_macs),
                       "search/argmax_macs": float(cur), "search/target_macs": target, "search/tau": tau}
            run.log(epoch + 1, **metrics)  # also the epoch's one log line (rank 0)
            run.save_state(epoch + 1, **components, extra={"tracked": step.tracked_state(), "held_out": held_out})

        layout = model.layout()
        wi, di = model.argmax_indices()
        band_w, band_d, band_found, feas_w, feas_d, feas_found = step.tracked()
        state_out = {
            "width_logits": model.width_logits.detach().cpu().clone(),
            "depth_logits": model.depth_logits.detach().cpu().clone(),
            "width_probs": model.width_probs().detach().cpu(),
            "depth_probs": model.depth_probs().detach().cpu(),
            "width_index": wi.cpu().tolist(), "depth_index": di.cpu().tolist(),
            "band_width_index": band_w.cpu().tolist(), "band_depth_index": band_d.cpu().tolist(),
            "band_found": bool(band_found), "feasible_width_index": feas_w.cpu().tolist(),
            "feasible_depth_index": feas_d.cpu().tolist(), "feasible_found": bool(feas_found),
            "layout": layout, "base": config.base, "mode": config.mode,
            "net": _net(task),
            "target_macs": target, "tolerance_macs": tol, "base_macs": max_macs,
            "retrain": {"kd_alpha": config.kd_alpha, "kd_temperature": config.kd_temperature},
        }
        with torch.no_grad():
            metrics = {"expected_macs": float(table(model.width_probs(), model.depth_probs())),
                       "argmax_macs": float(table(*model.argmax_probs())),
                       "initial_argmax_macs": float(step.initial_macs), "target_macs": target,
                       "tolerance_macs": tol, "base_macs": max_macs}
        return SearchResult(method=self.name, state=state_out, metrics=metrics, config=config.to_dict())

    # ---- the final rule --------------------------------------------------------------------------
    def derive(self, result: SearchResult) -> Arch:
        st = result.state
        layout, net = st["layout"], st["net"]
        # the final argmax (for a dimension that was not searched, the unpruned choice)
        widx = st.get("width_index") or _argmax(st["width_logits"], layout["choices"])
        didx = st.get("depth_index") or _argmax(st["depth_logits"], layout["depth_choices"])
        spec = spec_from_indices(layout, widx, didx)
        macs = shapes_macs(resnet_conv_shapes(spec, net["input"], net["num_classes"]))
        target, tol = st["target_macs"], st["tolerance_macs"]
        source = "final"
        if not target - tol <= macs <= target:  # the final net is outside the loss's zero band
            key = None
            if st["band_found"]:
                key, source = "band", "last-in-band"
            elif macs > target + tol and st["feasible_found"]:
                key, source = "feasible", "last-under-target"
            if key is not None:
                spec = spec_from_indices(layout, st[f"{key}_width_index"], st[f"{key}_depth_index"])
                macs = shapes_macs(resnet_conv_shapes(spec, net["input"], net["num_classes"]))
                log.warning("the final argmax network is outside the FLOP band [%.4g, %.4g]: the result is the %s "
                            "argmax network the search visited (%.4g MACs)", target - tol, target,
                            source.replace("-", " ").removeprefix("last "), macs)
        result.metrics.update({"derived_from": source, "derived_macs": float(macs),
                               "within_tolerance": bool(abs(macs - target) <= tol)})
        return _arch(spec, net, {"base": st["base"], "target_macs": target, "tolerance_macs": tol,
                                 "derived_from": source, "mode": st.get("mode", "both"),
                                 "retrain": dict(st.get("retrain") or {})})

    # ---- the harness's ranking hook --------------------------------------------------------------
    def sample_and_score(self, run_dir: str | Path, task: Task, n: int, seed: int, *, batch_size: int = 256,
                         bn_batches: int = 8, max_draws_factor: int = 50) -> list[tuple[Arch, float]]:
        """`n` distinct pruned networks drawn from a finished search's width and depth distributions, each
        with its held-out accuracy under the searchable network's shared weights (Kendall's tau check).

        Sampling: every conv's width from softmax(width_logits) and every stage's depth from
        softmax(depth_logits) of `run_dir`'s final checkpoint, with `torch.Generator().manual_seed(seed)`;
        the first `n` distinct networks out of `max_draws_factor * n` draws (fewer when the distributions
        are too peaked to give `n`). Each network is returned as the Arch that `derive` writes for that
        configuration (space "resnet", the search's net, counted costs), so `nas train` retrains it.

        Scoring: the searchable network at that hard choice (`ranking.one_hot_sample`: one width per
        conv, one depth per stage), top-1 on the held-out half that TAS took its architecture steps on
        (the same per-class 50/50 split of the training set, from `task.seed`; checked against the
        fingerprint the search recorded), in batches of `batch_size`, eval mode, no gradients, no
        fine-tuning (`nas_common.oneshot.score_candidates`).

        BatchNorm: the per-width running statistics were accumulated by the mixed multi-width, mixed-depth
        network of the search (see `ranking`), so they do not fit a hard configuration. Before scoring,
        each configuration's statistics are re-estimated (`nas_common.oneshot.recalibrate_bn`) from
        `bn_batches` batches of the other (weight) half: train-mode forwards without gradients (in-memory
        data without augmentation, shuffled with `task.seed`; the same batches for every configuration,
        so a score does not depend on `seed` or on the other samples). `bn_batches=0` keeps the search's.

        Raises RunError when `run_dir` is not a finished tas search made with this task's seed and data.
        """
        if n < 1:
            raise ConfigError(f"n={n}: ask for at least one architecture to sample")
        model, config, record = _load_finished_run(run_dir, task)
        configs = sample_configs(model, n, torch.Generator().manual_seed(int(seed)), max(1, max_draws_factor) * n)
        train_half, valid_half = _halves(task)
        held = make_loader(valid_half, min(batch_size, len(valid_half)), train=False, device=task.device,
                           distributed=False)
        calibration: list[tuple[torch.Tensor, torch.Tensor]] = []
        if bn_batches > 0:
            loader = make_loader(train_half, min(batch_size, len(train_half)), train=True, augment=False,
                                 device=task.device, seed=task.seed, distributed=False)
            calibration = [batch for _, batch in zip(range(bn_batches), loader, strict=False)]
        accs = score_configs(model, configs, held, calibration)
        budget_macs = Budget.from_dict(record.get("budget")).macs
        target, tol = _flop_target(config, budget_macs, FlopTable(model).max_macs)
        prov = {"base": config.base, "target_macs": target, "tolerance_macs": tol, "derived_from": "sampled",
                "sample_seed": int(seed), "mode": config.mode,
                "retrain": {"kd_alpha": config.kd_alpha, "kd_temperature": config.kd_temperature}}
        layout, net = model.layout(), _net(task)
        return [(_arch(spec_from_indices(layout, w.tolist(), d.tolist()), net, prov).with_costs(), acc)
                for (w, d), acc in zip(configs, accs, strict=False)]


def build_search_model(config: TASConfig, task: Task) -> SearchResNet:
    """The searchable network of `config.base` for `task`'s classes and input shape (on the CPU)."""
    return SearchResNet(base_spec(config.base), task.num_classes, task.input_shape, config.width_ratios,
                        config.mix, config.arch_init_std, k=config.sampled_widths,
                        search_width=config.mode in ("both", "width"), search_depth=config.mode in ("both", "depth"))


def reachable_macs(config: TASConfig, task: Task) -> tuple[float, float]:
    """(MACs of the unpruned base, MACs of the cheapest network the search can derive) for `task`'s
    classes and input shape, in closed form (nothing is built)."""
    full = base_spec(config.base)
    lowest = narrowest_spec(full, config.width_ratios, config.mode in ("both", "width"),
                            config.mode in ("both", "depth"))
    shape, classes = task.input_shape, task.num_classes
    return (float(shapes_macs(resnet_conv_shapes(full, shape, classes))),
            float(shapes_macs(resnet_conv_shapes(lowest, shape, classes))))


def lr_factor(epoch: int, epochs: int, warmup: int, lr: float, lr_min: float) -> float:
    """The weights' learning rate at `epoch` over `lr`: linear warm-up for `warmup` epochs, then cosine to lr_min."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    t = (epoch - warmup) / max(1, epochs - warmup)
    floor = lr_min / lr
    return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * t)) / 2.0


class SearchStep:
    """One TAS search step, with its optimisers and the tracking of on-target argmax networks.

    `step(xt, yt, xv, yv, tau)`:
      (i)  a weight step: CE on the train-half batch (xt, yt) through a fresh sample (drawn without
           gradient), SGD on the network's weights only, through `net` (the DDP-wrapped `model` under
           torchrun, which averages the weights' gradients over ranks);
      (ii) an architecture step: CE on the validation-half batch (xv, yv) through another fresh sample
           plus flop_weight * L_FLOP (expected MACs from the plain distributions, the argmax network's
           MACs deciding the sign), gradients by `torch.autograd.grad` of the unwrapped `model` with
           respect to the searched logits only (first order: no weight gradients), averaged over ranks,
           then Adam;
      then the argmax network is recorded if it is inside [target - tol, target] (and, separately, if
      it is under the target), with `torch.where` on device tensors.
    Both samples' Gumbel noise is drawn at the start of the step and, under torchrun, broadcast from
    rank 0, so that every rank trains the same sampled network on its shard of the batch, as one process
    would on the whole batch (in one process the noise is what the global RNG gives, unchanged).
    Returns the step's (train loss, train acc, valid CE, valid acc, flop loss) as one device tensor.
    Nothing in it reads a value back to the host.
    """

    def __init__(self, model: SearchResNet, table: FlopTable, config: TASConfig, target: float, tol: float, *,
                 net: nn.Module | None = None, ctx: SearchContext | None = None) -> None:
        self.model, self.table, self.config = model, table, config
        self.net = net if net is not None else model
        self.ctx = ctx
        self.target, self.tol = float(target), float(tol)
        self.w_opt = torch.optim.SGD(model.weight_parameters(), lr=config.lr, momentum=config.momentum,
                                     nesterov=config.nesterov, weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.w_opt, lambda e: lr_factor(e, config.epochs, config.warmup_epochs, config.lr, config.lr_min))
        self.arch_params = model.arch_parameters()
        # fused: its step counter lives on the device (the default keeps it on the host and reads it there)
        self.a_opt = torch.optim.Adam(self.arch_params, lr=config.arch_lr, betas=tuple(config.arch_betas),
                                      weight_decay=config.arch_weight_decay, fused=True)
        with torch.no_grad():  # start from the initial argmax network
            self.band_w, self.band_d = model.argmax_indices()
            f = table(*model.argmax_probs())
            self.initial_macs = f
            self.band_found = (f >= self.target - self.tol) & (f <= self.target)
            self.feas_w, self.feas_d, self.feas_found = self.band_w.clone(), self.band_d.clone(), f <= self.target

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers by name, as the run's checkpoint stores them."""
        return {"weights": self.w_opt, "arch": self.a_opt}

    def schedulers(self) -> dict[str, Any]:
        return {"weights": self.sched}

    def noise(self) -> tuple[tuple[torch.Tensor | None, ...], tuple[torch.Tensor | None, ...]]:
        """The Gumbel noise of the step's two samples (weights, architecture), the same on every rank."""
        drawn = (self.model.draw_noise(), self.model.draw_noise())
        if self.ctx is None or not self.ctx.distributed:
            return drawn
        parts = [t for sample in drawn for t in sample if t is not None]
        flat = self.ctx.broadcast_(torch.cat([t.reshape(-1) for t in parts]))  # one collective, no host read
        it = iter(flat.split([t.numel() for t in parts]))
        return tuple(tuple(None if t is None else next(it).view_as(t) for t in sample)  # type: ignore[return-value]
                     for sample in drawn)

    def __call__(self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, tau: float
                 ) -> torch.Tensor:
        model, table = self.model, self.table
        noise_w, noise_a = self.noise()
        with torch.no_grad():
            sample = model.sample(tau, noise_w)
        logits = self.net(xt, sample)
        loss = F.cross_entropy(logits, yt)
        self.w_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.w_opt.step()
        logits_v = model(xv, model.sample(tau, noise_a))
        ce_v = F.cross_entropy(logits_v, yv)
        with torch.no_grad():
            current = table(*model.argmax_probs())
        l_flop = flop_loss(table(model.width_probs(), model.depth_probs()), current, self.target, self.tol)
        grads = torch.autograd.grad(ce_v + self.config.flop_weight * l_flop, self.arch_params)
        for p, g in zip(self.arch_params, grads, strict=True):
            p.grad = g
        if self.ctx is not None:
            self.ctx.all_reduce_grads(self.arch_params)  # the mean over ranks (a no-op in one process)
        self.a_opt.step()
        with torch.no_grad():
            wi, di = model.argmax_indices()
            f = table(*model.argmax_probs())
            ok = (f >= self.target - self.tol) & (f <= self.target)
            self.band_w, self.band_d = torch.where(ok, wi, self.band_w), torch.where(ok, di, self.band_d)
            self.band_found = self.band_found | ok
            ok = f <= self.target
            self.feas_w, self.feas_d = torch.where(ok, wi, self.feas_w), torch.where(ok, di, self.feas_d)
            self.feas_found = self.feas_found | ok
            return torch.stack([loss.detach(), (logits.argmax(1) == yt).float().mean(), ce_v.detach(),
                                (logits_v.argmax(1) == yv).float().mean(), l_flop.detach().float()])

    def tracked(self) -> tuple[torch.Tensor, ...]:
        """(band width idx, band depth idx, band found, feasible width idx, feasible depth idx, feasible found)."""
        return self.band_w, self.band_d, self.band_found, self.feas_w, self.feas_d, self.feas_found

    def tracked_state(self) -> dict[str, Any]:
        """The on-target tracking, as the checkpoint's `extra["tracked"]` keeps it."""
        return {"band": {"w": self.band_w, "d": self.band_d, "found": self.band_found},
                "feasible": {"w": self.feas_w, "d": self.feas_d, "found": self.feas_found},
                "initial_macs": self.initial_macs}

    def load_tracked(self, state: dict[str, Any]) -> None:
        dev = self.band_w.device
        self.band_w, self.band_d, self.band_found = (state["band"][k].to(dev) for k in ("w", "d", "found"))
        self.feas_w, self.feas_d, self.feas_found = (state["feasible"][k].to(dev) for k in ("w", "d", "found"))
        self.initial_macs = state["initial_macs"].to(dev)


def _net(task: Task) -> dict[str, Any]:
    """The "net" of every Arch this method writes: the dataset's classes and input shape."""
    return {"num_classes": task.num_classes, "input": list(task.input_shape)}


def _arch(spec: dict[str, Any], net: dict[str, Any], provenance: dict[str, Any]) -> Arch:
    """The "resnet"-space Arch of a pruned spec, as `derive` writes it (one place for derive and the hook)."""
    return Arch("resnet", spec, dict(net), method=TASSearch.name, provenance=dict(provenance))


def _halves(task: Task) -> tuple[Split, Split]:
    """TAS's (weight half, architecture half) of the training set: 50/50 per class, from `task.seed`."""
    return task.dataset.train.split(0.5, seed=task.seed, per_class=True)


def _flop_target(config: TASConfig, budget_macs: float | None, max_macs: float) -> tuple[float, float]:
    """(target MACs, tolerance): the MACs budget if given, else prune_ratio x the unpruned MACs."""
    target = float(budget_macs) if budget_macs is not None else config.prune_ratio * max_macs
    return target, config.flop_tolerance * max_macs


def _load_finished_run(run_dir: str | Path, task: Task) -> tuple[SearchResNet, TASConfig, dict[str, Any]]:
    """The final searchable network of a finished tas search in `run_dir` (on task.device, eval mode),
    its config and its config.toml record; a one-line RunError says what is wrong and how to fix it
    (another method's run, another seed or dataset, an unfinished run, other held-out images)."""
    run = Run.open(run_dir, method=TASSearch.name, task=task)
    config = run.config(TASConfig)
    model = build_search_model(config, task).to(task.device)
    extra = run.load_final(config.epochs, model={"net": model}, map_location=task.device)
    held_out = _halves(task)[1].fingerprint()
    if extra.get("held_out") != held_out:
        raise RunError(f"the architecture half of this task's data ({held_out['images']} images of "
                       f"{task.dataset.name!r}) is not the one the search in {str(run_dir)!r} was made on "
                       f"({(extra.get('held_out') or {}).get('images', '?')} images): pass a Task on the search's "
                       f"dataset, subset and seed")
    return model.eval(), config, run.record


def _argmax(logits: torch.Tensor, choices: list[list[int]]) -> list[int]:
    valid = torch.tensor([[j < len(c) for j in range(logits.shape[1])] for c in choices])
    return logits.masked_fill(~valid, float("-inf")).argmax(-1).tolist()
