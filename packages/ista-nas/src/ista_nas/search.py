"""ISTASearch: the two-stage and one-stage ISTA-NAS search loops, resumable through the Run, on one
process or data-parallel under torchrun.

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

Data-parallel (`torchrun --nproc-per-node K -m nas_common.cli search ista-nas ...`), through the task's
search context: `batch_size` (and `one_stage.batch_size`) stays the global batch, each rank reading
batch_size/K images of its shard; the supernet's weight steps go through DDP; b's gradient is averaged
over the ranks before its Adam step (so is that of an op BN unfrozen after DDP was set up); rank 0
solves the LASSO (and, one-stage, takes the freeze and size-guard decisions) once per epoch and every
rank adopts its answer. The search state (b, z, support, op weights) is then identical on every rank.

No step function syncs with the host: losses are summed on the device (`nas_common.oneshot.Accumulator`)
and read once per epoch; supports are read once per epoch.
"""
from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from nas_common.arch import Arch
from nas_common.context import SearchContext
from nas_common.costs import count_costs
from nas_common.data import make_loader
from nas_common.errors import ConfigError, NASError
from nas_common.methods import CliOption, SearchMethod, SearchResult, Task
from nas_common.oneshot import Accumulator, score_candidates
from nas_common.runs import Run

from .closed_form import darts_costs
from .coding import CompressedCode, genotype_from_support, support_weights, top_support, uniform_supports
from .config import ISTAConfig
from .costs import count_macs_ptflops
from .lasso import LassoError
from .network import DARTS_BN_SPACE, SparseForward, absorb, one_stage_supernet, search_supernet, set_op_bn_trainable

log = logging.getLogger(__name__)


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


def _local(device: torch.device) -> SearchContext:
    """The one-process context (for the step functions called without one, e.g. by tests)."""
    return SearchContext(device)


def _supernet(model: nn.Module) -> nn.Module:
    """The supernet inside a (possibly DDP-wrapped) `SparseForward`."""
    inner = SearchContext.unwrap(model)
    return inner.net if isinstance(inner, SparseForward) else inner


def _sparse(model: nn.Module) -> nn.Module:
    """`model` as something called like `forward_sparse` (a bare supernet is wrapped in SparseForward)."""
    return model if isinstance(SearchContext.unwrap(model), SparseForward) else SparseForward(model)


def _adam(b: torch.Tensor, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.Adam:
    """b's Adam, fused where torch has the kernel (CPU, CUDA): the unfused update keeps its step counter
    on the host and reads it every step (`.item()`), the fused one keeps it on b's device and reads
    nothing; the update is the same."""
    fused = b.device.type in ("cpu", "cuda")
    return torch.optim.Adam([b], lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)


class ISTASearch(SearchMethod):
    """ISTA-NAS: NAS as sparse coding (two-stage and one-stage). See the module docstring."""

    name = "ista-nas"
    spaces = ("darts", "darts-bn")
    config_cls = ISTAConfig
    budget_kinds = ()  # the paper searches without a cost budget (one-stage has a size guard instead)
    cli_options = (CliOption("--mode", key="mode", metavar="two-stage|one-stage",
                             help="two-stage (search, then retrain the genotype; default) or one-stage (the "
                                  "target network searched and trained in one run)"),)

    # ---- entry points ----------------------------------------------------------------------------
    def check(self, task: Task, config: ISTAConfig) -> None:
        """Refusals before anything is written: a budget (ISTA-NAS takes none: the base class), a batch
        that does not split over the ranks, data too small for one search step per epoch, a one-stage
        size guard that rejects every architecture of the space."""
        super().check(task, config)
        ctx = task.context
        ds = task.dataset
        if config.mode == "two-stage":
            batch = ctx.per_rank_batch(config.batch_size, "batch_size")
            parts = zip(("training", "validation"), ds.train.split(config.train_fraction, seed=task.seed),
                        strict=True)
            key = "batch_size"
        else:
            batch = ctx.per_rank_batch(config.one_stage.batch_size, "one_stage.batch_size")
            parts = [("training", ds.train)]
            key = "one_stage.batch_size"
        for what, part in parts:
            n = len(part)
            if n // ctx.world_size < batch:
                per = f" ({n // ctx.world_size} per rank)" if ctx.distributed else ""
                raise ConfigError(f"the {what} part of {ds.name} holds {n} images{per}, fewer than one batch of "
                                  f"{batch}: no search step would run; lower -o {key} or use more data")
        if config.mode == "one-stage":
            smallest = _smallest_params(_eval_net(config, task), config.steps)
            if smallest >= config.one_stage.max_params:
                raise ConfigError(f"one_stage.max_params={config.one_stage.max_params:g} rejects every architecture: "
                                  f"the smallest network of the space at eval_C={config.eval_C}, eval_layers="
                                  f"{config.eval_layers} has {smallest:g} params (the size guard rejects that many "
                                  f"or more); raise one_stage.max_params or lower eval_C / eval_layers")

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
        config.train_fraction, seed=task.seed)[1]` (config from the run), unaugmented, with the search
        supernet of its final checkpoint run sparsely (only the 2 ops per node); the search recorded the
        fingerprints of both halves, and other data is refused. Op weights:
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
        scoring each architecture the statistics are re-estimated (`nas_common.oneshot`, bn
        "recalibrate": the plain average over the same `bn_batches` training batches, the first batches
        of the search's training loader, seed task.seed, epoch 0). No weight is changed. Batched, on
        task.device, in the config's memory format; one host read at the end.

        Arch: `darts` with `genotype_from_support(support)` and the evaluation net that `derive` writes.
        Raises NASError (one line) for a run_dir without a finished two-stage ista-nas search, a
        one-stage run, or a task that differs from the search's (seed, dataset, its halves).
        """
        if op_weights not in ("half", "code"):
            raise ConfigError(f"op_weights={op_weights!r}: use 'code' (the code's formula) or 'half' (each op 1/2)")
        if bn_batches < 1:
            raise ConfigError(f"bn_batches={bn_batches}: BN statistics need at least 1 training batch")
        finished = Run.open(run_dir, method=self.name, task=task)
        config = finished.config(ISTAConfig)
        if config.mode != "two-stage":
            raise NASError(f"{run_dir} is a one-stage ista-nas run, which has no supernet to share weights from: "
                           f"sample_and_score needs a two-stage search (mode = \"two-stage\")")
        device = task.device
        net = search_supernet(config.C, task.num_classes, config.layers, config.steps, task.input_shape[0]).to(
            device, memory_format=_memory_format(config))
        code = self._code(config, task)
        extra = finished.load_final(config.epochs, model={"net": net, "code": code}, map_location=device)
        train_split, valid_split = task.dataset.train.split(config.train_fraction, seed=task.seed)
        halves = {"train": train_split.fingerprint(), "valid": valid_split.fingerprint()}
        if extra.get("halves") != halves:
            raise ConfigError(f"the data halves of this task differ from those the search in {run_dir} used "
                              f"({extra.get('halves')} vs {halves}): score it on the data it was searched on")
        supports = uniform_supports(code.mask, n, torch.Generator().manual_seed(seed), code.sparsity)
        weights = self.score_weights(code, supports.to(device), op_weights)
        cl = config.channels_last
        calib_loader = make_loader(train_split, config.batch_size, train=True, device=device, seed=task.seed,
                                   drop_last=False, channels_last=cl, distributed=False)
        calib_loader.set_epoch(0)
        calib = list(itertools.islice(calib_loader, bn_batches))
        valid = make_loader(valid_split, config.batch_size, train=False, device=device, channels_last=cl,
                            distributed=False)
        rows = supports.tolist()

        def forward(cands: Sequence[int], x: torch.Tensor) -> torch.Tensor:
            (a,) = cands
            return _logits(net.forward_sparse(x, *code.choices(weights[a], rows[a])))

        scores = score_candidates(range(len(rows)), forward, valid, model=net, calibration=calib, bn="recalibrate")
        net_cfg = _eval_net(config, task)
        prov = {"mode": "two-stage", "sampled": "uniform", "seed": seed, "op_weights": op_weights}
        return [(Arch("darts", genotype_from_support(s), dict(net_cfg), method=self.name, provenance=prov), top1)
                for s, (top1, _) in zip(rows, scores, strict=True)]

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
        stats = {"search/lasso_iters": res.iterations, "search/lasso_kkt_over_gamma": kkt,
                 "search/lasso_time_s": time.perf_counter() - t0}
        return z, stats

    def _lasso_decision(self, ctx: SearchContext, code: CompressedCode, config: ISTAConfig
                        ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The LASSO of every node solved on rank 0 from the current b; (z, statistics) on every rank."""
        return ctx.decide(self._recover, code, config)

    # ---- two-stage ---------------------------------------------------------------------------------
    @staticmethod
    def _two_stage_step(model: nn.Module, code: CompressedCode, support: list, b_opt: torch.optim.Optimizer,
                        w_opt: torch.optim.Optimizer, train_batch: tuple[torch.Tensor, torch.Tensor],
                        valid_batch: tuple[torch.Tensor, torch.Tensor], grad_clip: float,
                        ctx: SearchContext | None = None, train_acc: Accumulator | None = None,
                        valid_acc: Accumulator | None = None) -> None:
        """One search step: a b step on the validation batch (first order: only b's gradient, averaged
        over the ranks), then a weight step on the training batch with the updated, fixed op weights
        (through DDP when `model` is wrapped). `model` is a SparseForward (a bare supernet is wrapped).
        Losses and hits go into the accumulators, on the device; no host sync."""
        ctx = ctx if ctx is not None else _local(code.b.device)
        model = _sparse(model)
        xt, yt = train_batch
        xv, yv = valid_batch
        normal, reduce = code.choices(support=support)
        # no backward through the DDP module follows this forward: run the module itself
        logits_v = _logits(ctx.unwrap(model)(xv, normal, reduce))
        loss_v = F.cross_entropy(logits_v, yv)
        b_opt.zero_grad(set_to_none=True)
        (code.b.grad,) = torch.autograd.grad(loss_v, [code.b])
        ctx.all_reduce_grads([code.b])
        b_opt.step()
        with torch.no_grad():
            w = code.weights()
        normal, reduce = code.choices(w, support)
        logits = _logits(model(xt, normal, reduce))
        loss_t = F.cross_entropy(logits, yt)
        w_opt.zero_grad(set_to_none=True)
        loss_t.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        w_opt.step()
        if train_acc is not None:
            train_acc.add_batch(logits, yt, loss_t)
        if valid_acc is not None:
            valid_acc.add_batch(logits_v, yv, loss_v)

    def _search_two_stage(self, task: Task, config: ISTAConfig, run: Run) -> SearchResult:
        ctx = task.context
        device = ctx.device
        supernet = search_supernet(config.C, task.num_classes, config.layers, config.steps, task.input_shape[0]).to(
            device, memory_format=_memory_format(config))
        code = self._code(config, task)
        w_opt = torch.optim.SGD(supernet.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, config.epochs, eta_min=config.lr_min)
        b_opt = _adam(code.b, config.arch_lr, (config.arch_beta1, config.arch_beta2), config.arch_weight_decay)
        # the weights train on the first part of the split, b on the second (the official code: the first
        # and the last 25k CIFAR images); the ranking hook checks it reads the same halves
        train_split, valid_split = task.dataset.train.split(config.train_fraction, seed=task.seed)
        halves = {"train": train_split.fingerprint(), "valid": valid_split.fingerprint()}
        batch = ctx.per_rank_batch(config.batch_size, "batch_size")
        cl = config.channels_last
        train = ctx.loader(train_split, batch, train=True, seed=task.seed, channels_last=cl)
        valid = ctx.loader(valid_split, batch, train=True, seed=task.seed + 1, channels_last=cl)
        components = {"model": {"net": supernet, "code": code}, "optimizers": {"w": w_opt, "b": b_opt},
                      "schedulers": {"w": sched}}

        got = run.resume(**components, map_location=device)
        start = got.epoch if got is not None else 0
        if got is None:
            z, _ = self._lasso_decision(ctx, code, config)
            code.set_code(z)
        ctx.broadcast_params_([code.b])
        model = ctx.wrap(SparseForward(supernet))

        for epoch in run.progress(range(start, config.epochs), desc="ista-nas two-stage",
                                  total=config.epochs - start):
            t0 = time.perf_counter()
            lr = w_opt.param_groups[0]["lr"]
            train.set_epoch(epoch)
            valid.set_epoch(epoch)
            supernet.train()
            support = code.support.tolist()  # one host transfer per epoch
            acc_t, acc_v = Accumulator(device), Accumulator(device)
            for batch_t, batch_v in zip(train, valid, strict=False):
                with ctx.step():
                    self._two_stage_step(model, code, support, b_opt, w_opt, batch_t, batch_v, config.grad_clip,
                                         ctx, acc_t, acc_v)
            sched.step()
            old_support = code.support.clone()
            z, stats = self._lasso_decision(ctx, code, config)
            code.set_code(z)
            mt, mv = acc_t.compute(reduce_ranks=True), acc_v.compute(reduce_ranks=True)
            changed = int((code.support != old_support).any(-1).sum())
            metrics = {"train/loss": mt["loss"], "train/top1": mt["top1"], "valid/loss": mv["loss"],
                       "valid/top1": mv["top1"], "train/lr": lr,
                       "search/support_changed": changed, "search/b_norm": float(code.b.detach().norm()),
                       "search/epoch_time_s": time.perf_counter() - t0, **stats}
            run.log(epoch + 1, **metrics)
            if ctx.is_main:
                log.debug("ista-nas two-stage epoch %d/%d: train loss %.4f top1 %.3f, valid loss %.4f, %d nodes "
                          "changed support", epoch + 1, config.epochs, mt["loss"], mt["top1"], mv["loss"], changed)
            run.save_state(epoch + 1, **components, extra={"halves": halves})

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
        ctx = task.context
        device = ctx.device
        net_cfg = _eval_net(config, task)
        supernet = one_stage_supernet(config.eval_C, task.num_classes, config.eval_layers, config.steps,
                                      task.input_shape[0], config.eval_auxiliary, stem=config.eval_stem).to(
                                          device, memory_format=_memory_format(config))
        code = self._code(config, task)
        w_opt = torch.optim.SGD(supernet.parameters(), lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay)
        # stepped only in the train phase, as the official code: the search phase runs at the constant lr
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, max(oc.epochs, 1), eta_min=oc.lr_min)
        b_opt = _adam(code.b, oc.arch_lr, (config.arch_beta1, config.arch_beta2), oc.arch_weight_decay)
        loader = ctx.loader(task.dataset.train, ctx.per_rank_batch(oc.batch_size, "one_stage.batch_size"), train=True,
                            seed=task.seed, cutout=oc.cutout, channels_last=config.channels_last)
        frozen = torch.zeros(2, config.steps, dtype=torch.bool, device=device)
        phase, train_start, start = "search", 0, 0
        components = {"model": {"net": supernet, "code": code}, "optimizers": {"w": w_opt, "b": b_opt},
                      "schedulers": {"w": sched}}

        got = run.resume(**components, map_location=device)
        if got is not None:
            start = got.epoch
            frozen = got.extra["frozen"].to(device)
            phase, train_start = got.extra["phase"], int(got.extra["train_start"])
            self._unfreeze_bns(supernet, code, frozen)
        else:
            z, _ = self._lasso_decision(ctx, code, config)
            code.set_code(z)
        ctx.broadcast_params_([code.b])
        # DDP averages the gradients of the parameters trainable now; BNs unfrozen later are averaged
        # with b's (`shared`)
        model = ctx.wrap(SparseForward(supernet))
        in_ddp = {id(p) for p in supernet.parameters() if p.requires_grad}

        total = oc.max_search_epochs + 1 + oc.epochs  # an upper bound: the search usually freezes earlier
        for epoch in run.progress(range(start, total), desc="ista-nas one-stage", total=total - start):
            if phase == "train" and epoch - train_start >= oc.epochs:
                break
            t0 = time.perf_counter()
            loader.set_epoch(epoch)
            lr = w_opt.param_groups[0]["lr"]
            shared = [p for p in supernet.parameters() if p.requires_grad and id(p) not in in_ddp]
            if phase == "search":
                all_frozen = bool(frozen.all())  # the flags this epoch starts with (the official's test)
                metrics = self._one_stage_search_epoch(model, code, frozen, loader, w_opt, b_opt, config, ctx, shared)
                if all_frozen:  # the official code stops after one more epoch with every node frozen
                    phase, train_start = "train", epoch + 1
                else:
                    decision = ctx.decide(self._one_stage_decision, code, frozen, config, net_cfg)
                    metrics.update(decision["log"])
                    self._apply_freeze(code, decision, frozen, supernet)
                    if epoch + 1 >= oc.max_search_epochs and not bool(frozen.all()):
                        # searched for the longest allowed: freeze every node as it is
                        frozen.fill_(True)
                        self._unfreeze_bns(supernet, code, frozen)
                        phase, train_start = "train", epoch + 1
                        metrics["search/forced_freeze"] = 1
                metrics["search/phase"] = "search"
            else:
                supernet.drop_path_prob = oc.drop_path * (epoch - train_start) / max(oc.epochs, 1)
                metrics = self._one_stage_train_epoch(model, code, loader, w_opt, oc, ctx, shared)
                sched.step()
                metrics["search/phase"] = "train"
            metrics.update({"search/frozen": int(frozen.sum()), "train/lr": lr,
                            "search/epoch_time_s": time.perf_counter() - t0})
            run.log(epoch + 1, **metrics)
            if ctx.is_main:
                log.debug("ista-nas one-stage epoch %d (%s): train loss %.4f top1 %.3f, %d of %d nodes frozen",
                          epoch + 1, metrics["search/phase"], metrics["train/loss"], metrics["train/top1"],
                          metrics["search/frozen"], frozen.numel())
            run.save_state(epoch + 1, **components,
                           extra={"phase": phase, "train_start": train_start, "frozen": frozen.cpu()})

        result_model = self._absorbed_model(supernet, code, net_cfg, config)
        return SearchResult(
            self.name,
            state={"mode": "one-stage", "z": code.z.detach().cpu(), "b": code.b.detach().cpu(),
                   "support": code.support.cpu(), "weights": code.weights().detach().cpu(), "net": net_cfg,
                   "search_epochs": train_start},
            metrics={"search_epochs": train_start, "train_epochs": oc.epochs},
            config=config.to_dict(),
            model=result_model,
        )

    @staticmethod
    def _unfreeze_bns(supernet: nn.Module, code: CompressedCode, frozen: torch.Tensor) -> None:
        support = code.support.tolist()
        for t, i in frozen.nonzero().tolist():
            set_op_bn_trainable(supernet, t, i, [(c // code.n_ops, c % code.n_ops) for c in support[t][i]])

    @staticmethod
    def _joint_loss(model: nn.Module, normal: Any, reduce: Any, batch: tuple[torch.Tensor, torch.Tensor],
                    oc: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        out = model(x, normal, reduce)
        logits = _logits(out)
        loss = F.cross_entropy(logits, y)
        if isinstance(out, tuple):
            loss = loss + oc.auxiliary_weight * F.cross_entropy(out[1], y)
        return logits, loss

    @staticmethod
    def _one_stage_search_step(model: nn.Module, code: CompressedCode, support: list, frozen: torch.Tensor,
                               keep_b: torch.Tensor, w_opt: torch.optim.Optimizer, b_opt: torch.optim.Optimizer,
                               batch: tuple[torch.Tensor, torch.Tensor], oc: Any, ctx: SearchContext | None = None,
                               acc: Accumulator | None = None, shared: Sequence[torch.Tensor] = ()) -> None:
        """One joint step: one backward (through DDP when `model` is wrapped), b's gradient (and those of
        `shared`) averaged over the ranks, then the b step (frozen nodes keep their b) and the weight
        step. `model` is a SparseForward (a bare supernet is wrapped). No host sync."""
        ctx = ctx if ctx is not None else _local(code.b.device)
        model = _sparse(model)
        logits, loss = ISTASearch._joint_loss(model, *code.choices(support=support), batch, oc)
        w_opt.zero_grad(set_to_none=True)
        b_opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.all_reduce_grads([code.b, *shared])
        b_opt.step()
        with torch.no_grad():  # frozen nodes keep their b exactly
            code.b.copy_(torch.where(frozen.unsqueeze(-1), keep_b, code.b))
        nn.utils.clip_grad_norm_(model.parameters(), oc.grad_clip)
        w_opt.step()
        if acc is not None:
            acc.add_batch(logits, batch[1], loss)

    def _one_stage_search_epoch(self, model: nn.Module, code: CompressedCode, frozen: torch.Tensor, loader: Any,
                                w_opt: torch.optim.Optimizer, b_opt: torch.optim.Optimizer, config: ISTAConfig,
                                ctx: SearchContext, shared: Sequence[torch.Tensor] = ()) -> dict[str, Any]:
        """One epoch of joint updates at the constant lr, without drop path."""
        supernet = _supernet(model)
        supernet.train()
        supernet.drop_path_prob = 0.0
        support = code.support.tolist()  # one host transfer per epoch
        keep_b = code.b.detach().clone()
        acc = Accumulator(code.b.device)
        for batch in loader:
            with ctx.step():
                self._one_stage_search_step(model, code, support, frozen, keep_b, w_opt, b_opt, batch,
                                            config.one_stage, ctx, acc, shared)
        m = acc.compute(reduce_ranks=True)
        return {"train/loss": m["loss"], "train/top1": m["top1"]}

    @staticmethod
    def _one_stage_train_step(model: nn.Module, normal: Any, reduce: Any, w_opt: torch.optim.Optimizer,
                              batch: tuple[torch.Tensor, torch.Tensor], oc: Any, ctx: SearchContext | None = None,
                              acc: Accumulator | None = None, shared: Sequence[torch.Tensor] = ()) -> None:
        """One weight step of the train phase, op weights fixed. No host sync."""
        model = _sparse(model)
        logits, loss = ISTASearch._joint_loss(model, normal, reduce, batch, oc)
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        if shared:
            (ctx if ctx is not None else _local(logits.device)).all_reduce_grads(shared)
        nn.utils.clip_grad_norm_(model.parameters(), oc.grad_clip)
        w_opt.step()
        if acc is not None:
            acc.add_batch(logits, batch[1], loss)

    def _one_stage_train_epoch(self, model: nn.Module, code: CompressedCode, loader: Any,
                               w_opt: torch.optim.Optimizer, oc: Any, ctx: SearchContext,
                               shared: Sequence[torch.Tensor] = ()) -> dict[str, Any]:
        """One epoch of the train phase: the searched network with its op weights as fixed multipliers."""
        _supernet(model).train()
        with torch.no_grad():
            w = code.weights()
        normal, reduce = code.choices(w, code.support.tolist())
        acc = Accumulator(code.b.device)
        for batch in loader:
            with ctx.step():
                self._one_stage_train_step(model, normal, reduce, w_opt, batch, oc, ctx, acc, shared)
        m = acc.compute(reduce_ranks=True)
        return {"train/loss": m["loss"], "train/top1": m["top1"]}

    def _one_stage_decision(self, code: CompressedCode, frozen: torch.Tensor, config: ISTAConfig,
                            net_cfg: dict[str, Any]) -> dict[str, Any]:
        """Rank 0's per-epoch decision: the LASSO from the current b, then the freeze and size-guard rule."""
        z, stats = self._recover(code, config)
        decision = self._freeze_decision(code, z, frozen, config, net_cfg)
        decision["log"].update(stats)
        return decision

    @staticmethod
    def _freeze_decision(code: CompressedCode, z: torch.Tensor, frozen: torch.Tensor, config: ISTAConfig,
                         net_cfg: dict[str, Any]) -> dict[str, Any]:
        """What to adopt from a new z: the new codes of the unfrozen nodes (None when the size guard
        rejects the selection they make: the old one stays and freezing waits for an accepted one) and
        the nodes that freeze now, those whose z moved by at most `freeze_tol` (‖Δz‖₂ of the whole LASSO
        solution, as the official code)."""
        oc = config.one_stage
        old = code.z
        new = torch.where(frozen.unsqueeze(-1), old, z)
        moved = (new - old).norm(dim=-1)
        cand_support = top_support(new, code.mask, code.sparsity)
        params = _count_params(genotype_from_support(cand_support.tolist()), net_cfg)
        log_ = {"search/z_moved_max": float(moved.max()), "search/candidate_params": params}
        if params >= oc.max_params:
            log_["search/rejected"] = 1
            return {"z": None, "newly": None, "log": log_}
        return {"z": new, "newly": (~frozen) & (moved <= oc.freeze_tol), "log": log_}

    @staticmethod
    def _apply_freeze(code: CompressedCode, decision: dict[str, Any], frozen: torch.Tensor,
                      supernet: nn.Module) -> None:
        """Adopt a `_freeze_decision` (every rank the same): the codes, the frozen flags, the BNs of the
        newly frozen nodes' ops made trainable."""
        if decision["z"] is None:
            return
        code.set_code(decision["z"])
        newly = decision["newly"]
        frozen |= newly
        support = code.support.tolist()
        for t, i in newly.nonzero().tolist():
            set_op_bn_trainable(supernet, t, i, [(c // code.n_ops, c % code.n_ops) for c in support[t][i]])

    def _freeze_update(self, code: CompressedCode, z: torch.Tensor, frozen: torch.Tensor, supernet: nn.Module,
                       config: ISTAConfig, net_cfg: dict[str, Any], log_: dict[str, Any]) -> None:
        """`_freeze_decision` and `_apply_freeze` in one process (its log entries into `log_`)."""
        decision = self._freeze_decision(code, z, frozen, config, net_cfg)
        log_.update(decision["log"])
        self._apply_freeze(code, decision, frozen, supernet)

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


def _count_params(spec: dict[str, Any], net: dict[str, Any]) -> float:
    """Parameters (without the auxiliary head) of the `darts-bn` evaluation network of `spec`: the
    closed form, which equals `count_params` of the built network (tested)."""
    costs = darts_costs(DARTS_BN_SPACE.validate_spec(spec), DARTS_BN_SPACE.validate_net(net), bn_after_param_free=True)
    return float(costs["params"])


def _smallest_params(net: dict[str, Any], steps: int) -> float:
    """The fewest parameters a network of the ISTA-NAS space has at `net`'s size: every entry a pooling
    op (an affine BN, the cheapest op of `darts-bn`), each cell type reading one cell input only (so
    only that input is preprocessed), whichever of the two is cheaper."""
    def spec(j_normal: int, j_reduce: int) -> dict[str, Any]:
        concat = list(range(2, steps + 2))
        return {"normal": [["max_pool_3x3", j_normal]] * (2 * steps), "normal_concat": concat,
                "reduce": [["max_pool_3x3", j_reduce]] * (2 * steps), "reduce_concat": list(concat)}

    return min(_count_params(spec(a, b), net) for a in (0, 1) for b in (0, 1))


__all__ = ["ISTASearch"]
