"""ISTASearch: the two-stage and one-stage ISTA-NAS search loops, resumable through the Run.

Two-stage (the default): the DARTS search supernet (8 cells, C 16) on a 50/50 split of the training
data; each step updates b on a validation batch (Adam, first order) and the network weights on a
training batch (SGD, cosine); after each epoch z is re-solved from b by the LASSO and the top-2
support changes accordingly (the exact LASSO: a node it cannot solve stops the search with an error).
The genotype (top-2 |z| per node) is written as a `darts` arch with the evaluation size (C 36, 20 cells,
auxiliary; or DARTS' ImageNet network), to be retrained by `nas train`.

One-stage (`mode = "one-stage"`): the searched network is the evaluation network, trained on all
training data with one backward per batch feeding both the b step and the weight step; a node whose z
moved at most `freeze_tol` in an epoch is frozen (its b, z fixed, its ops' BNs trainable); one epoch
after all are frozen, the same network trains on with the same optimizer and its op weights as fixed
multipliers, and when that ends the weights are absorbed into the BNs. The result holds that network
(`result.model`), a `darts-bn` arch that `nas eval` evaluates without retraining.

No step function syncs with the host: losses are summed on the device and read once per epoch.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from nas_common.arch import Arch
from nas_common.config import resolve_config
from nas_common.costs import count_costs
from nas_common.data import make_loader
from nas_common.errors import ConfigError, NASError
from nas_common.methods import SearchMethod, SearchResult, Task
from nas_common.runs import Run, load_final_checkpoint, read_search_record

from .coding import CompressedCode, genotype_from_support, support_weights, top_support, uniform_supports
from .config import ISTAConfig
from .costs import count_macs_ptflops
from .lasso import LassoError
from .network import DARTS_BN_SPACE, absorb, one_stage_supernet, search_supernet, set_op_bn_trainable


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _memory_format(config: ISTAConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.preserve_format


def _eval_net(config: ISTAConfig, task: Task) -> dict[str, Any]:
    """The `net` of the derived arch: the evaluation size, DARTS' ImageNet layout with eval_stem=imagenet."""
    c, h, w = task.input_shape
    net = {"C": config.eval_C, "layers": config.eval_layers, "auxiliary": config.eval_auxiliary,
           "num_classes": task.num_classes, "input": [c, h, w]}
    if config.eval_stem != "cifar":
        net["stem"] = config.eval_stem
    return net


class ISTASearch(SearchMethod):
    """ISTA-NAS: NAS as sparse coding (two-stage and one-stage). See the module docstring."""

    name = "ista-nas"
    spaces = ("darts", "darts-bn")
    config_cls = ISTAConfig

    # ---- entry points ----------------------------------------------------------------------------
    def search(self, task: Task, config: ISTAConfig, run: Run) -> SearchResult:
        if config.mode == "one-stage":
            return self._search_one_stage(task, config, run)
        return self._search_two_stage(task, config, run)

    def derive(self, result: SearchResult) -> Arch:
        """Top-2 |z| per node -> genotype -> an arch at the evaluation size (`darts`, or `darts-bn` for a
        one-stage result, whose trained network is `result.model`), with its costs: `macs`, `params` and
        `macs-ptflops` (the published tables' convention, see `ista_nas.costs`)."""
        support = result.state["support"]
        support = support.tolist() if isinstance(support, torch.Tensor) else support
        spec = genotype_from_support(support)
        space = "darts-bn" if result.state.get("mode") == "one-stage" else "darts"
        arch = Arch(space, spec, dict(result.state["net"]), method=self.name,
                    provenance={"mode": result.state.get("mode", "two-stage")})
        with torch.random.fork_rng(devices=[]):  # building the network must not move the global RNG
            model = arch.build()
            shape = tuple(arch.net["input"])
            costs = {**count_costs(model, shape), "macs-ptflops": float(count_macs_ptflops(model, shape))}
        return arch.replace(costs=costs)

    # ---- the harness's ranking hook -----------------------------------------------------------------
    def sample_and_score(self, run_dir: str | Path, task: Task, n: int, seed: int, *,
                         op_weights: Literal["code", "half"] = "code", bn_batches: int = 8
                         ) -> list[tuple[Arch, float]]:
        """`n` distinct architectures from the uniform prior, each with its held-out accuracy under the
        shared weights of the finished two-stage search in `run_dir` (Kendall's tau vs stand-alone).

        Sampling: ISTA-NAS has no distribution over architectures beyond its current code, so per node
        of each cell type 2 distinct candidates among its 7·(i+2) (input, op) pairs, uniformly
        (`uniform_supports`, a CPU torch.Generator seeded with `seed`), duplicates dropped.

        Scoring: on the validation half the search updated b on, `task.dataset.train.split(
        config.train_fraction, seed=task.seed)[1]` (config from run_dir/config.toml), unaugmented, with
        the search supernet of checkpoints/last.pt run sparsely (only the 2 ops per node). Op weights:
        - "code" (default): the code's formula w_S = z_S + A_Sᵀ(b − A_S z_S), with the final b and z, on
          the sampled support S (z_S is z on S: 0 for candidates outside the final code, so w = A_Sᵀb
          there). It is how the search weighted every op it ran, and for the learned support these are
          exactly the weights it trained and validated with. The shared weights are co-adapted with
          these small, signed weights (a 3-epoch `tiny` run on cifar10-mini learned weights from 1e-3 to
          0.3 in magnitude, of both signs): its derived architecture scored 21.7% held-out with its code
          weights but 8.3%, below chance, with 1/2 each, so fixed weights evaluate functions the supernet
          never computed.
        - "half": every selected op weighs 1/2 (the node is the mean of its two ops; the stand-alone
          network's relative weighting, the same for every architecture), for comparison.
        BatchNorm: the supernet's BNs (non-affine in the ops, with running statistics) hold the
        statistics of the search's last supports, which do not fit another architecture; so before
        scoring each architecture every BN's statistics are reset and re-estimated as the plain average
        over the same `bn_batches` training batches (the search's training half: the first batches of
        its training loader, seed task.seed, epoch 0), by train-mode forwards without gradients; then
        eval mode. No weight is changed. Batched, on task.device, in the config's memory format.

        Arch: `darts` with `genotype_from_support(support)` and the evaluation net that `derive` writes.
        Raises NASError (one line) for a run_dir without a finished two-stage ista-nas search, a
        one-stage run, or a task that differs from the search's (seed, dataset).
        """
        if op_weights not in ("half", "code"):
            raise ConfigError(f"op_weights={op_weights!r}: use 'code' (the code's formula) or 'half' (each op 1/2)")
        if bn_batches < 1:
            raise ConfigError(f"bn_batches={bn_batches}: BN statistics need at least 1 training batch")
        config, state = self._load_finished_two_stage(Path(run_dir), task)
        device = task.device
        net = search_supernet(config.C, task.num_classes, config.layers, config.steps, task.input_shape[0]).to(
            device, memory_format=_memory_format(config))
        code = self._code(config, task)
        try:
            net.load_state_dict(state["net"])
            code.load_state_dict(state["code"])
        except RuntimeError:
            raise ConfigError(f"the supernet in {run_dir} does not fit this task ({task.num_classes} classes, "
                              f"input {list(task.input_shape)}): score it on the dataset it was searched on") from None
        supports = uniform_supports(code.mask, n, torch.Generator().manual_seed(seed), code.sparsity)
        weights = self.score_weights(code, supports.to(device), op_weights)
        train_split, valid_split = task.dataset.train.split(config.train_fraction, seed=task.seed)
        cl = config.channels_last
        calib_loader = make_loader(train_split, config.batch_size, train=True, device=device, seed=task.seed,
                                   drop_last=False, channels_last=cl)
        calib_loader.set_epoch(0)
        calib = list(itertools.islice(calib_loader, bn_batches))
        valid = make_loader(valid_split, config.batch_size, train=False, device=device, channels_last=cl)
        accs = self._score_supports(net, code, supports.tolist(), weights, calib, valid)
        net_cfg = _eval_net(config, task)
        prov = {"mode": "two-stage", "sampled": "uniform", "seed": seed, "op_weights": op_weights}
        return [(Arch("darts", genotype_from_support(s), dict(net_cfg), method=self.name, provenance=prov), acc)
                for s, acc in zip(supports.tolist(), accs, strict=False)]

    @staticmethod
    def score_weights(code: CompressedCode, supports: torch.Tensor, op_weights: str = "code") -> torch.Tensor:
        """Op weights (k, 2, steps, sparsity) for supports (k, 2, steps, sparsity): w_S = z_S + A_Sᵀ(b − A_S z_S)
        with the code's b and z ("code"), or 1/2 each ("half"); see `sample_and_score`."""
        if op_weights == "half":
            return torch.full(supports.shape, 0.5, device=code.b.device)
        k = supports.shape[0]
        with torch.no_grad():
            return support_weights(code.A.expand(k, *code.A.shape), code.b.expand(k, *code.b.shape),
                                   code.z.expand(k, *code.z.shape), supports.to(code.b.device))

    @staticmethod
    def _score_supports(net: nn.Module, code: CompressedCode, supports: list, weights: torch.Tensor,
                        calib: list[tuple[torch.Tensor, torch.Tensor]], valid: Any) -> list[float]:
        """Held-out top-1 accuracy of each support after re-estimating the BN statistics on `calib`."""
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.momentum = None  # running statistics = the plain average over the calibration batches
        correct = torch.zeros(len(supports), device=weights.device)
        seen = 0
        with torch.no_grad():
            for a, support in enumerate(supports):
                normal, reduce = code.choices(weights[a], support)
                for m in bns:
                    m.reset_running_stats()
                net.train()
                for x, _ in calib:
                    net.forward_sparse(x, normal, reduce)
                net.eval()
                for x, y in valid:
                    correct[a] += (_logits(net.forward_sparse(x, normal, reduce)).argmax(1) == y).sum()
                    if a == 0:
                        seen += y.shape[0]
        return (correct / max(seen, 1)).tolist()

    def _load_finished_two_stage(self, run_dir: Path, task: Task) -> tuple[ISTAConfig, dict[str, Any]]:
        """The saved config and last checkpoint of a finished two-stage search; NASError otherwise."""
        record = read_search_record(run_dir, self.name, task)
        config = resolve_config(ISTAConfig, preset=None, file=record.get("config", {}))
        if config.mode != "two-stage":
            raise NASError(f"{run_dir} is a one-stage ista-nas run, which has no supernet to share weights from: "
                           f"sample_and_score needs a two-stage search (mode = \"two-stage\")")
        state = load_final_checkpoint(run_dir, self.name, config.epochs, task.device, keys=("net", "code"))
        return config, state

    # ---- shared pieces ---------------------------------------------------------------------------
    @staticmethod
    def _code(config: ISTAConfig, task: Task) -> CompressedCode:
        code = CompressedCode(config.steps, config.m, 2, b_init_std=config.b_init_std, seed=task.seed)
        return code.to(task.device)

    @staticmethod
    def _recover(code: CompressedCode, config: ISTAConfig) -> tuple[torch.Tensor, dict[str, Any]]:
        """The LASSO solution of every node from the current b (not adopted yet), and its statistics.

        The homotopy raises LassoError itself if a node fails; the iterative solvers may stop at their
        iteration cap, and then this raises instead of letting the search adopt an unconverged support.
        """
        t0 = time.perf_counter()
        z, res = code.recover(config.gamma, method=config.lasso_method, tol=config.lasso_tol,
                              max_iter=config.lasso_max_iter)
        converged = int(res.converged.sum())
        kkt = float(res.kkt.max()) / config.gamma if res.kkt is not None else float("nan")
        if converged < res.converged.numel():
            raise LassoError(f"lasso_method={config.lasso_method!r} stopped after {res.iterations} iterations with "
                             f"{res.converged.numel() - converged} of {res.converged.numel()} nodes unconverged "
                             f"(optimality residual {kkt:.3g}*gamma > lasso_tol={config.lasso_tol:g}): their "
                             f"support may be wrong; use lasso_method=homotopy (exact) or raise lasso_max_iter")
        stats = {"lasso_iters": res.iterations, "lasso_kkt_over_gamma": kkt, "lasso_time_s": time.perf_counter() - t0}
        return z, stats

    # ---- two-stage ---------------------------------------------------------------------------------
    @staticmethod
    def _two_stage_step(net: nn.Module, code: CompressedCode, support: list, b_opt: torch.optim.Optimizer,
                        w_opt: torch.optim.Optimizer, train_batch: tuple[torch.Tensor, torch.Tensor],
                        valid_batch: tuple[torch.Tensor, torch.Tensor], grad_clip: float) -> torch.Tensor:
        """One search step: a b step on the validation batch (first order: only b's gradient), then a
        weight step on the training batch with the updated, fixed op weights. Returns the device tensor
        [train loss sum, train correct, valid loss sum]; no host sync."""
        xt, yt = train_batch
        xv, yv = valid_batch
        normal, reduce = code.choices(support=support)
        loss_v = F.cross_entropy(_logits(net.forward_sparse(xv, normal, reduce)), yv)
        b_opt.zero_grad(set_to_none=True)
        (code.b.grad,) = torch.autograd.grad(loss_v, [code.b])
        b_opt.step()
        with torch.no_grad():
            w = code.weights()
        normal, reduce = code.choices(w, support)
        logits = _logits(net.forward_sparse(xt, normal, reduce))
        loss_t = F.cross_entropy(logits, yt)
        w_opt.zero_grad(set_to_none=True)
        loss_t.backward()
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        w_opt.step()
        with torch.no_grad():
            return torch.stack([loss_t.detach() * yt.shape[0], (logits.argmax(1) == yt).sum().to(logits.dtype),
                                loss_v.detach() * yv.shape[0]])

    def _search_two_stage(self, task: Task, config: ISTAConfig, run: Run) -> SearchResult:
        device = task.device
        c_in = task.input_shape[0]
        net = search_supernet(config.C, task.num_classes, config.layers, config.steps, c_in).to(
            device, memory_format=_memory_format(config))
        code = self._code(config, task)
        w_opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, config.epochs, eta_min=config.lr_min)
        b_opt = torch.optim.Adam([code.b], lr=config.arch_lr, betas=(config.arch_beta1, config.arch_beta2),
                                 weight_decay=config.arch_weight_decay)
        # the weights train on the first part of the split, b on the second (the official code: the first
        # and the last 25k CIFAR images)
        train_split, valid_split = task.dataset.train.split(config.train_fraction, seed=task.seed)
        cl = config.channels_last
        train = make_loader(train_split, config.batch_size, train=True, device=device, seed=task.seed, channels_last=cl)
        valid = make_loader(valid_split, config.batch_size, train=True, device=device, seed=task.seed + 1,
                            channels_last=cl)

        start = 0
        state = run.restore()
        if state is not None:
            net.load_state_dict(state["net"])
            code.load_state_dict(state["code"])
            w_opt.load_state_dict(state["w_opt"])
            b_opt.load_state_dict(state["b_opt"])
            sched.load_state_dict(state["sched"])
            start = int(state["epoch"])
        else:
            z, _ = self._recover(code, config)
            code.set_code(z)

        for epoch in run.progress(range(start, config.epochs), desc="ista-nas two-stage",
                                  total=config.epochs - start):
            t0 = time.perf_counter()
            train.set_epoch(epoch)
            valid.set_epoch(epoch)
            net.train()
            support = code.support.tolist()  # one host transfer per epoch
            tot = torch.zeros(3, device=device)  # train loss sum, train correct, valid loss sum
            seen_t = seen_v = 0
            for batch_t, batch_v in zip(train, valid, strict=False):
                tot += self._two_stage_step(net, code, support, b_opt, w_opt, batch_t, batch_v, config.grad_clip)
                seen_t += batch_t[1].shape[0]
                seen_v += batch_v[1].shape[0]
            sched.step()
            old_support = code.support.clone()
            z, stats = self._recover(code, config)
            code.set_code(z)
            t_loss, t_correct, v_loss = tot.tolist()
            changed = int((code.support != old_support).any(-1).sum())
            run.log(epoch + 1, train_loss=t_loss / max(seen_t, 1), train_acc=t_correct / max(seen_t, 1),
                    valid_loss=v_loss / max(seen_v, 1), support_changed=changed,
                    b_norm=float(code.b.detach().norm()), epoch_time_s=time.perf_counter() - t0, **stats)
            run.checkpoint({"net": net.state_dict(), "code": code.state_dict(), "w_opt": w_opt.state_dict(),
                            "b_opt": b_opt.state_dict(), "sched": sched.state_dict()}, epoch=epoch + 1)

        return SearchResult(
            self.name,
            state={"mode": "two-stage", "z": code.z.detach().cpu(), "b": code.b.detach().cpu(),
                   "support": code.support.cpu(), "weights": code.weights().detach().cpu(),
                   "net": _eval_net(config, task)},
            metrics={"epochs": config.epochs},
            config=config.to_dict(),
        )

    # ---- one-stage ---------------------------------------------------------------------------------
    def _search_one_stage(self, task: Task, config: ISTAConfig, run: Run) -> SearchResult:
        """Search phase: joint b and weight steps on all training data at the constant lr; after each
        epoch z is re-solved and the nodes whose z moved at most `freeze_tol` freeze (their BNs become
        trainable); once every node is frozen, one more epoch, then the train phase (the official code's
        schedule): the same network, optimizer and fixed op weights, cosine lr to `lr_min`, drop path
        ramped to `drop_path`, `epochs` epochs. At the end the weights are absorbed into the BNs."""
        oc = config.one_stage
        device = task.device
        net_cfg = _eval_net(config, task)
        supernet = one_stage_supernet(config.eval_C, task.num_classes, config.eval_layers, config.steps,
                                      task.input_shape[0], config.eval_auxiliary, stem=config.eval_stem).to(
                                          device, memory_format=_memory_format(config))
        code = self._code(config, task)
        w_opt = torch.optim.SGD(supernet.parameters(), lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay)
        # stepped only in the train phase, as the official code: the search phase runs at the constant lr
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, max(oc.epochs, 1), eta_min=oc.lr_min)
        b_opt = torch.optim.Adam([code.b], lr=oc.arch_lr, betas=(config.arch_beta1, config.arch_beta2),
                                 weight_decay=oc.arch_weight_decay)
        loader = make_loader(task.dataset.train, oc.batch_size, train=True, device=device, seed=task.seed,
                             cutout=oc.cutout, channels_last=config.channels_last)
        frozen = torch.zeros(2, config.steps, dtype=torch.bool, device=device)
        phase, train_start, start = "search", 0, 0

        state = run.restore()
        if state is not None:
            start = int(state["epoch"])
            code.load_state_dict(state["code"])
            frozen = state["frozen"].to(device)
            phase, train_start = state["phase"], int(state["train_start"])
            supernet.load_state_dict(state["net"])
            w_opt.load_state_dict(state["w_opt"])
            b_opt.load_state_dict(state["b_opt"])
            sched.load_state_dict(state["sched"])
            self._unfreeze_bns(supernet, code, frozen)
        else:
            z, _ = self._recover(code, config)
            code.set_code(z)

        total = oc.max_search_epochs + 1 + oc.epochs  # an upper bound: the search usually freezes earlier
        for epoch in run.progress(range(start, total), desc="ista-nas one-stage", total=total - start):
            if phase == "train" and epoch - train_start >= oc.epochs:
                break
            t0 = time.perf_counter()
            loader.set_epoch(epoch)
            lr = w_opt.param_groups[0]["lr"]
            if phase == "search":
                all_frozen = bool(frozen.all())  # the flags this epoch starts with (the official's test)
                log = self._one_stage_search_epoch(supernet, code, frozen, loader, w_opt, b_opt, config)
                if all_frozen:  # the official code stops after one more epoch with every node frozen
                    phase, train_start = "train", epoch + 1
                else:
                    z, stats = self._recover(code, config)
                    log.update(stats)
                    self._freeze_update(code, z, frozen, supernet, config, net_cfg, log)
                    if epoch + 1 >= oc.max_search_epochs and not bool(frozen.all()):
                        # searched for the longest allowed: freeze every node as it is
                        frozen.fill_(True)
                        self._unfreeze_bns(supernet, code, frozen)
                        phase, train_start = "train", epoch + 1
                        log["forced_freeze"] = 1
                log["phase"] = "search"
            else:
                supernet.drop_path_prob = oc.drop_path * (epoch - train_start) / max(oc.epochs, 1)
                log = self._one_stage_train_epoch(supernet, code, loader, w_opt, oc)
                sched.step()
                log["phase"] = "train"
            run.log(epoch + 1, frozen=int(frozen.sum()), lr=lr, epoch_time_s=time.perf_counter() - t0, **log)
            run.checkpoint({"phase": phase, "train_start": train_start, "net": supernet.state_dict(),
                            "w_opt": w_opt.state_dict(), "b_opt": b_opt.state_dict(), "sched": sched.state_dict(),
                            "code": code.state_dict(), "frozen": frozen.cpu()}, epoch=epoch + 1)

        model = self._absorbed_model(supernet, code, net_cfg, config)
        return SearchResult(
            self.name,
            state={"mode": "one-stage", "z": code.z.detach().cpu(), "b": code.b.detach().cpu(),
                   "support": code.support.cpu(), "weights": code.weights().detach().cpu(), "net": net_cfg,
                   "search_epochs": train_start},
            metrics={"search_epochs": train_start, "train_epochs": oc.epochs},
            config=config.to_dict(),
            model=model,
        )

    @staticmethod
    def _unfreeze_bns(supernet: nn.Module, code: CompressedCode, frozen: torch.Tensor) -> None:
        support = code.support.tolist()
        for t, i in frozen.nonzero().tolist():
            set_op_bn_trainable(supernet, t, i, [(c // code.n_ops, c % code.n_ops) for c in support[t][i]])

    @staticmethod
    def _one_stage_search_step(supernet: nn.Module, code: CompressedCode, support: list, frozen: torch.Tensor,
                               keep_b: torch.Tensor, w_opt: torch.optim.Optimizer, b_opt: torch.optim.Optimizer,
                               batch: tuple[torch.Tensor, torch.Tensor], oc: Any) -> torch.Tensor:
        """One joint step: one backward, then the b step (frozen nodes keep their b) and the weight step.
        Returns the device tensor [loss sum, correct]; no host sync."""
        x, y = batch
        normal, reduce = code.choices(support=support)
        out = supernet.forward_sparse(x, normal, reduce)
        logits = _logits(out)
        loss = F.cross_entropy(logits, y)
        if isinstance(out, tuple):
            loss = loss + oc.auxiliary_weight * F.cross_entropy(out[1], y)
        w_opt.zero_grad(set_to_none=True)
        b_opt.zero_grad(set_to_none=True)
        loss.backward()
        b_opt.step()
        with torch.no_grad():  # frozen nodes keep their b exactly
            code.b.copy_(torch.where(frozen.unsqueeze(-1), keep_b, code.b))
        nn.utils.clip_grad_norm_(supernet.parameters(), oc.grad_clip)
        w_opt.step()
        with torch.no_grad():
            return torch.stack([loss.detach() * y.shape[0], (logits.argmax(1) == y).sum().to(logits.dtype)])

    def _one_stage_search_epoch(self, supernet: nn.Module, code: CompressedCode, frozen: torch.Tensor,
                                loader: Any, w_opt: torch.optim.Optimizer, b_opt: torch.optim.Optimizer,
                                config: ISTAConfig) -> dict[str, Any]:
        """One epoch of joint updates at the constant lr, without drop path."""
        supernet.train()
        supernet.drop_path_prob = 0.0
        support = code.support.tolist()  # one host transfer per epoch
        keep_b = code.b.detach().clone()
        tot = torch.zeros(2, device=code.b.device)
        seen = 0
        for batch in loader:
            tot += self._one_stage_search_step(supernet, code, support, frozen, keep_b, w_opt, b_opt, batch,
                                               config.one_stage)
            seen += batch[1].shape[0]
        loss, correct = tot.tolist()
        return {"train_loss": loss / max(seen, 1), "train_acc": correct / max(seen, 1)}

    @staticmethod
    def _one_stage_train_step(supernet: nn.Module, normal: Any, reduce: Any, w_opt: torch.optim.Optimizer,
                              batch: tuple[torch.Tensor, torch.Tensor], oc: Any) -> torch.Tensor:
        """One weight step of the train phase, op weights fixed. Returns [loss sum, correct]; no host sync."""
        x, y = batch
        out = supernet.forward_sparse(x, normal, reduce)
        logits = _logits(out)
        loss = F.cross_entropy(logits, y)
        if isinstance(out, tuple):
            loss = loss + oc.auxiliary_weight * F.cross_entropy(out[1], y)
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(supernet.parameters(), oc.grad_clip)
        w_opt.step()
        with torch.no_grad():
            return torch.stack([loss.detach() * y.shape[0], (logits.argmax(1) == y).sum().to(logits.dtype)])

    def _one_stage_train_epoch(self, supernet: nn.Module, code: CompressedCode, loader: Any,
                               w_opt: torch.optim.Optimizer, oc: Any) -> dict[str, Any]:
        """One epoch of the train phase: the searched network with its op weights as fixed multipliers."""
        supernet.train()
        with torch.no_grad():
            w = code.weights()
        normal, reduce = code.choices(w, code.support.tolist())
        tot = torch.zeros(2, device=code.b.device)
        seen = 0
        for batch in loader:
            tot += self._one_stage_train_step(supernet, normal, reduce, w_opt, batch, oc)
            seen += batch[1].shape[0]
        loss, correct = tot.tolist()
        return {"train_loss": loss / max(seen, 1), "train_acc": correct / max(seen, 1)}

    def _freeze_update(self, code: CompressedCode, z: torch.Tensor, frozen: torch.Tensor, supernet: nn.Module,
                       config: ISTAConfig, net_cfg: dict[str, Any], log: dict[str, Any]) -> None:
        """Adopt the new z for unfrozen nodes (unless the size guard rejects it) and freeze the nodes
        whose z moved by at most `freeze_tol` (‖Δz‖₂ of the whole LASSO solution, as the official code)."""
        oc = config.one_stage
        old = code.z.clone()
        new = torch.where(frozen.unsqueeze(-1), old, z)
        moved = (new - old).norm(dim=-1)
        cand_support = top_support(new, code.mask, code.sparsity)
        params = _count_params(genotype_from_support(cand_support.tolist()), net_cfg)
        log.update({"z_moved_max": float(moved.max()), "candidate_params": params})
        if params >= oc.max_params:
            log["rejected"] = 1  # keep the old selection; freezing waits for an accepted one
            return
        code.set_code(new)
        newly = (~frozen) & (moved <= oc.freeze_tol)
        frozen |= newly
        support = code.support.tolist()
        for t, i in newly.nonzero().tolist():
            set_op_bn_trainable(supernet, t, i, [(c // code.n_ops, c % code.n_ops) for c in support[t][i]])

    @staticmethod
    def _absorbed_model(supernet: nn.Module, code: CompressedCode, net_cfg: dict[str, Any],
                        config: ISTAConfig) -> nn.Module:
        """The trained `darts-bn` network: the supernet's selected ops with the op weights absorbed."""
        support = code.support.tolist()
        spec = genotype_from_support(support)
        with torch.random.fork_rng(devices=[]):  # built on the CPU: the global RNG stream is untouched
            model = absorb(supernet, code.weights().detach(), support, spec, net_cfg)
        model = model.to(memory_format=_memory_format(config))
        model.drop_path_prob = 0.0
        return model.eval()


_PARAMS_CACHE: dict[str, float] = {}


def _count_params(spec: dict[str, Any], net: dict[str, Any]) -> float:
    """Parameters (without the auxiliary head) of the evaluation network of `spec` (cached)."""
    from nas_common.costs import count_params

    key = json.dumps([spec, net], sort_keys=True)
    if key not in _PARAMS_CACHE:
        with torch.random.fork_rng(devices=[]):
            _PARAMS_CACHE[key] = float(count_params(DARTS_BN_SPACE.build(spec, net)))
    return _PARAMS_CACHE[key]


__all__ = ["ISTASearch"]
