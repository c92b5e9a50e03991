"""`TASSearch`: the TAS search loop and its final-architecture rule.

Per step (Dong & Yang 2019; the official `search_main_v2`):
  (i)  weights: CE on a train-half batch through a sampled network (two widths per conv, Gumbel-softmax
       depth weights), SGD Nesterov with cosine schedule;
  (ii) architecture: CE on a validation-half batch through a fresh sample + flop_weight * L_FLOP, Adam
       on the width/depth logits only (first order: the weights are not differentiated).
tau anneals 5 -> 0.1 by cosine over the epochs. The halves are a 50/50 per-class split of the training
set. The FLOP target is `task.budget.macs` or `prune_ratio` x the unpruned MACs, with a band of
`flop_tolerance` x the unpruned MACs below it.

Derive: the argmax width per conv and depth per stage (a "resnet"-space Arch), when that net lies in
the FLOP loss's zero band [target - tolerance, target] (the search's own "on target"). Otherwise the
last argmax net the search visited inside that band is returned (the official code also keeps a "best"
config within the tolerance), or, if there was none and the final net is over target + tolerance, the
last visited argmax net under the target. `result.metrics["derived_from"]` says which ("final",
"last-in-band", "last-under-target"); `within_tolerance` is |MACs - target| <= tolerance.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from nas_common import Arch, SearchResult, Task, make_loader
from nas_common.costs.tables import resnet_conv_shapes, shapes_macs
from nas_common.runs import Run

from .config import TASConfig
from .flops import FlopTable, flop_loss
from .model import SearchResNet, base_spec, spec_from_indices
from .ops import tau_at

__all__ = ["TASSearch"]


class TASSearch:
    """Network pruning via Transformable Architecture Search (NeurIPS 2019) on the "resnet" space."""

    name = "tas"
    budget_kinds = ("macs",)  # the harness passes a MACs budget (the FLOPs target); params only warn
    config_cls = TASConfig

    # ---- the search ------------------------------------------------------------------------------
    def search(self, task: Task, config: TASConfig, run: Run) -> SearchResult:
        device = task.device
        model = SearchResNet(base_spec(config.base), task.num_classes, task.input_shape, config.width_ratios,
                             config.mix, config.arch_init_std).to(device)
        table = FlopTable(model).to(device)
        max_macs = table.max_macs
        if task.budget.params is not None:
            warnings.warn("TAS prunes for MACs only: the params budget is not searched for", stacklevel=2)
        target = float(task.budget.macs) if task.budget.macs is not None else config.prune_ratio * max_macs
        tol = config.flop_tolerance * max_macs

        train_half, valid_half = task.dataset.train.split(0.5, seed=task.seed, per_class=True)
        bs_t, bs_v = min(config.batch_size, len(train_half)), min(config.batch_size, len(valid_half))
        train_loader = make_loader(train_half, bs_t, train=True, device=device, augment=config.augment,
                                   seed=task.seed)
        valid_loader = make_loader(valid_half, bs_v, train=True, device=device, augment=config.augment,
                                   seed=task.seed + 1)
        steps = min(len(train_loader), len(valid_loader))
        if config.max_steps_per_epoch:
            steps = min(steps, config.max_steps_per_epoch)

        w_opt = torch.optim.SGD(model.weight_parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=config.epochs, eta_min=config.lr_min)
        a_opt = torch.optim.Adam(model.arch_parameters(), lr=config.arch_lr, betas=tuple(config.arch_betas),
                                 weight_decay=config.arch_weight_decay)
        # the last argmax net inside [target - tol, target] (tensors: tracked without host syncs)
        # and the last one under the target, starting with the initial argmax net
        with torch.no_grad():
            band_w, band_d = model.argmax_indices()
            f = table(*model.argmax_probs())
            band_found = (f >= target - tol) & (f <= target)
            feas_w, feas_d, feas_found = band_w.clone(), band_d.clone(), f <= target
        start = 0
        state = run.restore(map_location=device)
        if state is not None:
            model.load_state_dict(state["model"])
            w_opt.load_state_dict(state["w_opt"])
            a_opt.load_state_dict(state["a_opt"])
            sched.load_state_dict(state["sched"])
            band_w, band_d, band_found = (state["band"][k].to(device) for k in ("w", "d", "found"))
            feas_w, feas_d, feas_found = (state["feasible"][k].to(device) for k in ("w", "d", "found"))
            start = int(state["epoch"])

        arch_params = model.arch_parameters()
        for epoch in range(start, config.epochs):
            tau = tau_at(epoch, config.epochs, config.tau_max, config.tau_min)
            train_loader.set_epoch(epoch)
            valid_loader.set_epoch(epoch)
            model.train()
            sums = torch.zeros(5, device=device)  # train loss, train acc, valid CE, valid acc, flop loss
            batches = zip(range(steps), train_loader, valid_loader)
            for _, (xt, yt), (xv, yv) in run.progress(batches, desc=f"tas {epoch + 1}/{config.epochs}",
                                                       total=steps):
                # (i) weight step on a train batch, through a sampled network
                with torch.no_grad():
                    sample = model.sample(tau)
                logits = model(xt, sample)
                loss = F.cross_entropy(logits, yt)
                w_opt.zero_grad(set_to_none=True)
                loss.backward()
                w_opt.step()
                # (ii) architecture step on a validation batch: CE + flop_weight * L_FLOP
                logits_v = model(xv, model.sample(tau))
                ce_v = F.cross_entropy(logits_v, yv)
                with torch.no_grad():
                    current = table(*model.argmax_probs())
                l_flop = flop_loss(table(model.width_probs(), model.depth_probs()), current, target, tol)
                grads = torch.autograd.grad(ce_v + config.flop_weight * l_flop, arch_params)
                for p, g in zip(arch_params, grads):
                    p.grad = g
                a_opt.step()
                with torch.no_grad():
                    wi, di = model.argmax_indices()
                    f = table(*model.argmax_probs())
                    ok = (f >= target - tol) & (f <= target)
                    band_w, band_d = torch.where(ok, wi, band_w), torch.where(ok, di, band_d)
                    band_found = band_found | ok
                    ok = f <= target
                    feas_w, feas_d = torch.where(ok, wi, feas_w), torch.where(ok, di, feas_d)
                    feas_found = feas_found | ok
                    sums += torch.stack([loss.detach(), (logits.argmax(1) == yt).float().mean(), ce_v.detach(),
                                         (logits_v.argmax(1) == yv).float().mean(), l_flop.detach().float()])
            sched.step()
            with torch.no_grad():
                e_macs = table(model.width_probs(), model.depth_probs())
                cur = table(*model.argmax_probs())
            vals = (sums / max(1, steps)).tolist()
            run.log(epoch + 1, train_loss=vals[0], train_acc=vals[1], valid_loss=vals[2], valid_acc=vals[3],
                    flop_loss=vals[4], expected_macs=float(e_macs), argmax_macs=float(cur), target_macs=target,
                    tau=tau, lr=w_opt.param_groups[0]["lr"])
            run.checkpoint({"model": model.state_dict(), "w_opt": w_opt.state_dict(), "a_opt": a_opt.state_dict(),
                            "sched": sched.state_dict(),
                            "band": {"w": band_w, "d": band_d, "found": band_found},
                            "feasible": {"w": feas_w, "d": feas_d, "found": feas_found}}, epoch + 1)

        layout = model.layout()
        state_out = {
            "width_logits": model.width_logits.detach().cpu().clone(),
            "depth_logits": model.depth_logits.detach().cpu().clone(),
            "width_probs": model.width_probs().detach().cpu(),
            "depth_probs": model.depth_probs().detach().cpu(),
            "band_width_index": band_w.cpu().tolist(), "band_depth_index": band_d.cpu().tolist(),
            "band_found": bool(band_found), "feasible_width_index": feas_w.cpu().tolist(),
            "feasible_depth_index": feas_d.cpu().tolist(), "feasible_found": bool(feas_found),
            "layout": layout, "base": config.base,
            "net": {"num_classes": task.num_classes, "input": list(task.input_shape)},
            "target_macs": target, "tolerance_macs": tol, "base_macs": max_macs,
        }
        with torch.no_grad():
            metrics = {"expected_macs": float(table(model.width_probs(), model.depth_probs())),
                       "argmax_macs": float(table(*model.argmax_probs())), "target_macs": target,
                       "tolerance_macs": tol, "base_macs": max_macs}
        return SearchResult(method=self.name, state=state_out, metrics=metrics, config=config.to_dict())

    # ---- the final rule --------------------------------------------------------------------------
    def derive(self, result: SearchResult) -> Arch:
        st = result.state
        layout, net = st["layout"], st["net"]
        widx = _argmax(st["width_logits"], layout["choices"])
        didx = _argmax(st["depth_logits"], layout["depth_choices"])
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
        return Arch("resnet", spec, dict(net), method=self.name,
                    provenance={"base": st["base"], "target_macs": target, "tolerance_macs": tol,
                                "derived_from": source})


def _argmax(logits: torch.Tensor, choices: list[list[int]]) -> list[int]:
    valid = torch.tensor([[j < len(c) for j in range(logits.shape[1])] for c in choices])
    return logits.masked_fill(~valid, float("-inf")).argmax(-1).tolist()
