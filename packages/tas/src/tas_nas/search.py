"""`TASSearch`: the TAS search loop and its final-architecture rule.

Per step (Dong & Yang 2019; the official `search_main_v2`), in `SearchStep`:
  (i)  weights: CE on a train-half batch through a sampled network (K widths per conv, Gumbel-softmax
       depth weights), SGD Nesterov with a cosine schedule (after an optional linear warm-up);
  (ii) architecture: CE on a validation-half batch through a fresh sample + flop_weight * L_FLOP, Adam
       on the width/depth logits only (first order: the weights are not differentiated).
tau anneals from tau_max to tau_min over the epochs (linearly 10 -> 0.1 by default, as the paper says;
the official script's cosine 5 -> 0.1 with `tau_schedule="cosine"`). The halves are a 50/50 per-class
split of the training set. The FLOP target is `task.budget.macs` or `prune_ratio` x the unpruned
MACs, with a band of `flop_tolerance` x the unpruned MACs below it.

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

import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nas_common import Arch, CliOption, ConfigError, RunError, SearchMethod, SearchResult, Split, Task, make_loader
from nas_common.config import config_from_dict
from nas_common.costs.tables import shapes_macs
from nas_common.runs import Run, load_final_checkpoint, read_search_record
from nas_common.spaces.resnet import resnet_conv_shapes

from .config import TASConfig
from .flops import FlopTable, flop_loss
from .model import SearchResNet, base_spec, spec_from_indices
from .ops import tau_at
from .ranking import sample_configs, score_configs

__all__ = ["TASSearch", "SearchStep", "build_search_model", "lr_factor"]


class TASSearch(SearchMethod):
    """Network pruning via Transformable Architecture Search (NeurIPS 2019) on the "resnet" space."""

    name = "tas"
    spaces = ("resnet",)
    cli_options = (CliOption("--prune-ratio", key="prune_ratio", metavar="R",
                             help="keep this fraction of the base network's MACs (without --budget-macs); "
                                  "= -o prune_ratio=R"),)
    budget_kinds = ("macs",)  # the harness passes a MACs budget (the FLOPs target); params only warn
    config_cls = TASConfig

    # ---- the search ------------------------------------------------------------------------------
    def search(self, task: Task, config: TASConfig, run: Run) -> SearchResult:
        device = task.device
        model = build_search_model(config, task).to(device)
        table = FlopTable(model).to(device)
        max_macs = table.max_macs
        if task.budget.params is not None:
            warnings.warn("TAS prunes for MACs only: the params budget is not searched for", stacklevel=2)
        target, tol = _flop_target(config, task.budget.macs, max_macs)

        train_half, valid_half = _halves(task)
        bs_t, bs_v = min(config.batch_size, len(train_half)), min(config.batch_size, len(valid_half))
        train_loader = make_loader(train_half, bs_t, train=True, device=device, augment=config.augment,
                                   seed=task.seed)
        valid_loader = make_loader(valid_half, bs_v, train=True, device=device, augment=config.augment,
                                   seed=task.seed + 1)
        steps = min(len(train_loader), len(valid_loader))
        if config.max_steps_per_epoch:
            steps = min(steps, config.max_steps_per_epoch)

        step = SearchStep(model, table, config, target, tol)
        start = 0
        state = run.restore(map_location=device)
        if state is not None:
            model.load_state_dict(state["model"])
            step.load_state_dict(state)
            start = int(state["epoch"])

        for epoch in range(start, config.epochs):
            tau = tau_at(epoch, config.epochs, config.tau_max, config.tau_min, config.tau_schedule)
            train_loader.set_epoch(epoch)
            valid_loader.set_epoch(epoch)
            model.train()
            sums = torch.zeros(5, device=device)  # train loss, train acc, valid CE, valid acc, flop loss
            batches = zip(range(steps), train_loader, valid_loader, strict=False)
            for _, (xt, yt), (xv, yv) in run.progress(batches, desc=f"tas {epoch + 1}/{config.epochs}",
                                                       total=steps):
                sums += step(xt, yt, xv, yv, tau)
            lr = step.w_opt.param_groups[0]["lr"]
            step.sched.step()
            with torch.no_grad():
                e_macs = table(model.width_probs(), model.depth_probs())
                cur = table(*model.argmax_probs())
            vals = (sums / max(1, steps)).tolist()
            run.log(epoch + 1, train_loss=vals[0], train_acc=vals[1], valid_loss=vals[2], valid_acc=vals[3],
                    flop_loss=vals[4], expected_macs=float(e_macs), argmax_macs=float(cur), target_macs=target,
                    tau=tau, lr=lr)
            run.checkpoint({"model": model.state_dict(), **step.state_dict()}, epoch + 1)

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
        (the same per-class 50/50 split of the training set, from `task.seed`), in batches of
        `batch_size`, eval mode, no gradients, no fine-tuning.

        BatchNorm: the per-width running statistics were accumulated by the mixed multi-width, mixed-depth
        network of the search (see `ranking.recalibrate_bn`), so they do not fit a hard configuration.
        Before scoring, each configuration's statistics are recomputed from `bn_batches` batches of the
        other (weight) half: train-mode forwards without gradients (in-memory data without augmentation,
        shuffled with `task.seed`; the same batches for every configuration, so a score does not depend
        on `seed` or on the other samples). `bn_batches=0` keeps the search's statistics.

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
        target, tol = _flop_target(config, (record.get("budget") or {}).get("macs"), FlopTable(model).max_macs)
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
           gradient), SGD on the network's weights only;
      (ii) an architecture step: CE on the validation-half batch (xv, yv) through another fresh sample
           plus flop_weight * L_FLOP (expected MACs from the plain distributions, the argmax network's
           MACs deciding the sign), Adam on the searched logits only (first order: no weight gradients);
      then the argmax network is recorded if it is inside [target - tol, target] (and, separately, if
      it is under the target), with `torch.where` on device tensors.
    Returns the step's (train loss, train acc, valid CE, valid acc, flop loss) as one device tensor.
    Nothing in it reads a value back to the host.
    """

    def __init__(self, model: SearchResNet, table: FlopTable, config: TASConfig, target: float, tol: float) -> None:
        self.model, self.table, self.config = model, table, config
        self.target, self.tol = float(target), float(tol)
        self.w_opt = torch.optim.SGD(model.weight_parameters(), lr=config.lr, momentum=config.momentum,
                                     nesterov=config.nesterov, weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.w_opt, lambda e: lr_factor(e, config.epochs, config.warmup_epochs, config.lr, config.lr_min))
        self.arch_params = model.arch_parameters()
        self.a_opt = torch.optim.Adam(self.arch_params, lr=config.arch_lr, betas=tuple(config.arch_betas),
                                      weight_decay=config.arch_weight_decay)
        with torch.no_grad():  # start from the initial argmax network
            self.band_w, self.band_d = model.argmax_indices()
            f = table(*model.argmax_probs())
            self.initial_macs = f
            self.band_found = (f >= self.target - self.tol) & (f <= self.target)
            self.feas_w, self.feas_d, self.feas_found = self.band_w.clone(), self.band_d.clone(), f <= self.target

    def __call__(self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, tau: float
                 ) -> torch.Tensor:
        model, table = self.model, self.table
        with torch.no_grad():
            sample = model.sample(tau)
        logits = model(xt, sample)
        loss = F.cross_entropy(logits, yt)
        self.w_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.w_opt.step()
        logits_v = model(xv, model.sample(tau))
        ce_v = F.cross_entropy(logits_v, yv)
        with torch.no_grad():
            current = table(*model.argmax_probs())
        l_flop = flop_loss(table(model.width_probs(), model.depth_probs()), current, self.target, self.tol)
        grads = torch.autograd.grad(ce_v + self.config.flop_weight * l_flop, self.arch_params)
        for p, g in zip(self.arch_params, grads, strict=True):
            p.grad = g
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

    def state_dict(self) -> dict[str, Any]:
        return {"w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(), "sched": self.sched.state_dict(),
                "band": {"w": self.band_w, "d": self.band_d, "found": self.band_found},
                "feasible": {"w": self.feas_w, "d": self.feas_d, "found": self.feas_found},
                "initial_macs": self.initial_macs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.band_w.device
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.sched.load_state_dict(state["sched"])
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
    its config and its config.toml record; a one-line RunError says what is wrong and how to fix it."""
    record = read_search_record(run_dir, TASSearch.name, task)
    config = config_from_dict(TASConfig, record.get("config", {}))
    state = load_final_checkpoint(run_dir, TASSearch.name, config.epochs, task.device, keys=("model",))
    model = build_search_model(config, task).to(task.device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise RunError(f"the network in {run_dir}/checkpoints/last.pt does not fit {task.dataset.name!r} "
                       f"({task.num_classes} classes, input {list(task.input_shape)}): pass a Task on the search's "
                       f"dataset") from None
    return model.eval(), config, record


def _argmax(logits: torch.Tensor, choices: list[list[int]]) -> list[int]:
    valid = torch.tensor([[j < len(c) for j in range(logits.shape[1])] for c in choices])
    return logits.masked_fill(~valid, float("-inf")).argmax(-1).tolist()
