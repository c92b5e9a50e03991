"""The Trainer: trains one network on one split, resumably, on whatever device the run gets.

Python API
----------
    from nas_common.train import Trainer, TrainConfig, evaluate
    from nas_common import get_dataset, get_arch, Run, seed_everything
    from nas_common.config import resolve_config

    ds = get_dataset("cifar10-mini")
    config = resolve_config(TrainConfig, preset="tiny", overrides=["epochs=3"])
    seed_everything(0)
    model = get_arch("resnet20").build()
    run = Run.create("runs/r20", {"kind": "train", "config": config.to_dict()})   # optional
    trainer = Trainer(model, config, run=run, device=None, teacher=None, seed=0)  # device None: CUDA if any
    metrics = trainer.fit(ds.train, ds.test)   # {"test_top1": ..., "test_top5": ..., "test_loss": ...}
    print(evaluate(model, ds.test))            # {"top1", "top5", "loss", "n"}

    Trainer(model, config=None, *, run=None, device=None, teacher=None, seed=0, arch=None, verbose=False)
        .fit(train: Split, test: Split | None = None) -> dict     trains config.epochs epochs (resuming
                                                                  from run's checkpoint when resuming)
        .train_epoch(loader, epoch: int) -> dict                  one epoch (loss, top1, images/s)
        .evaluate(split: Split) -> dict                           top1, top5 (percent), loss, n
        .components()                                             what a checkpoint holds, by name
        .model                                                    the (unwrapped) nn.Module
    evaluate(model, split, *, device=None, batch_size=256, amp="off", channels_last=False) -> dict
    distill_loss(student_logits, teacher_logits, targets, alpha=0.9, T=4.0) -> Tensor   (train/distill.py)
    train_arch(arch, dataset, out=..., preset=..., ...) -> TrainResult                  (train/api.py)

What one epoch does: shuffled, augmented batches from the device-resident loader (a pure function of
(seed, epoch), so a resumed run sees the same batches), forward under autocast (bf16 or fp16 with a
GradScaler, on CUDA only) in channels_last (CUDA and CPU: mkldnn runs NHWC convolutions faster),
cross-entropy with label smoothing, or the KD loss when a teacher is given, plus `auxiliary_weight`
times the auxiliary head's loss when the model returns (logits, aux) in training, backward, optional
gradient clipping, SGD step. The learning rate follows the schedule per epoch; drop path is ramped as
`drop_path * epoch / epochs` through the model's `drop_path_prob` attribute. Loss and accuracy are
summed on the device and read once per epoch; every `nan_check_every` steps one cheap read checks that
the loss is still finite.

After each epoch, when a `Run` is given: one record in metrics.jsonl/TensorBoard, then an atomic
checkpoint (model, optimizer, scheduler, scaler, epoch, history, config, arch digest; RNG states are
added by the Run). A non-finite loss or weight stops training with `TrainingDiverged` (a `RunError`)
naming the epoch and step; the checkpoint on disk is then the last good one, never a NaN state.

Under torchrun (several ranks): the model is wrapped in DDP, `config.batch_size` is the global batch
(each rank takes batch_size / world_size of the same shuffled order, so the global batches equal the
single-process ones), statistics are all-reduced, rank 0 writes, and at the end every rank checks that
it holds the same weights.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import dist
from ..arch import Arch
from ..config import config_to_dict
from ..data import Split, make_loader
from ..device import resolve_device
from ..errors import ConfigError, DataError, RunError
from ..log import get_logger
from ..runs import Run, canonical_metric
from .config import TrainConfig
from .distill import distill_loss

#: config.optimizer -> the optimizer over (params, config); TrainConfig.optimizer lists the same names
OPTIMIZERS: dict[str, Any] = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                                             weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
}

log = get_logger("train")


class TrainingDiverged(RunError):
    """The loss (or a weight) became NaN or infinite; the last good checkpoint is kept."""


# ---- small pure helpers -------------------------------------------------------------------------

def lr_factor(config: TrainConfig, epoch: int) -> float:
    """The learning-rate multiplier for (0-based) `epoch`: linear warm-up, then the schedule.

    The closed form of what `make_scheduler` does with torch's scheduler classes (tests compare them)."""
    w = config.warmup_epochs
    if epoch < w:
        return (epoch + 1) / (w + 1)
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        return config.gamma ** sum(1 for m in config.milestones if epoch >= m)
    t = (epoch - w) / max(1, config.epochs - w)
    floor = config.lr_min / config.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule of `config` from torch's own scheduler classes, stepped once per epoch: a linear
    warm-up (`LinearLR`, factor (e+1)/(w+1) in epoch e < w), then `CosineAnnealingLR` to `lr_min`,
    `MultiStepLR` at `milestones` or a constant rate, chained by `SequentialLR`."""
    from torch.optim import lr_scheduler as S

    c, w = config, config.warmup_epochs
    if c.schedule == "cosine":
        main: S.LRScheduler = S.CosineAnnealingLR(optimizer, T_max=max(1, c.epochs - w), eta_min=c.lr_min)
    elif c.schedule == "step":  # milestones count from the first epoch; the main schedule starts after warm-up
        main = S.MultiStepLR(optimizer, milestones=[m - w for m in c.milestones], gamma=c.gamma)
    else:
        main = S.LambdaLR(optimizer, lambda e: 1.0)
    if w == 0:
        return main
    warm = S.LinearLR(optimizer, start_factor=1.0 / (w + 1), end_factor=1.0, total_iters=w)
    return S.SequentialLR(optimizer, [warm, main], milestones=[w])


def split_output(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, aux logits or None) from what a model returns: a tensor or a (logits, aux) pair."""
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


def _amp_dtype(config: TrainConfig | str, device: torch.device) -> torch.dtype | None:
    amp = config.amp if isinstance(config, TrainConfig) else config
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, *, device: torch.device | str | None = None, batch_size: int = 256,
             amp: str | torch.dtype | None = "off", channels_last: bool = False) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) and mean cross-entropy of `model` on `split`.

    Under several ranks each rank evaluates every world_size-th item and the sums are all-reduced, so
    every item counts exactly once and every rank returns the same numbers.
    """
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    dtype = amp if isinstance(amp, torch.dtype) or amp is None else _amp_dtype(amp, device)
    ws, r = dist.world_size(), dist.rank()
    part = split.subset(torch.arange(r, len(split), ws)) if ws > 1 else split
    loader = make_loader(part, batch_size, train=False, device=device, channels_last=channels_last,
                         distributed=False)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits
    count = 0
    try:
        for x, y in loader:
            with _autocast(device, dtype):
                logits, _ = split_output(model(x))
            logits = logits.float()
            k = min(5, logits.shape[1])
            hit = logits.topk(k, dim=1).indices == y[:, None]
            sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                 hit[:, 0].sum().double(), hit.any(dim=1).sum().double()])
            count += y.shape[0]
    finally:
        model.train(was_training)
    total = torch.cat([sums, torch.tensor([float(count)], dtype=torch.float64, device=device)])
    loss, top1, top5, n = dist.all_reduce_(total).tolist()  # the one host sync
    if n == 0:
        raise DataError("cannot evaluate on an empty split")
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "n": int(n)}


# ---- the trainer --------------------------------------------------------------------------------

class Trainer:
    """Trains `model` with `config`; logs and checkpoints through `run` (optional); KD with `teacher`.

    `device`: None picks CUDA when present (this rank's GPU under torchrun), else CPU. `seed` drives the
    loader's shuffling and augmentation (the global RNGs are the caller's: seed them before building
    the model). `arch`, when given, is recorded in checkpoints so that resuming a checkpoint of another
    architecture fails clearly.
    """

    def __init__(self, model: nn.Module, config: TrainConfig | None = None, *, run: Run | None = None,
                 device: torch.device | str | None = None, teacher: nn.Module | None = None, seed: int = 0,
                 arch: Arch | None = None, verbose: bool = False) -> None:
        self.config = config or TrainConfig()
        self.device = resolve_device(device)
        self.run = run
        self.seed = seed
        self.arch = arch
        self.verbose = verbose
        self.amp_dtype = _amp_dtype(self.config, self.device)
        self.channels_last = self.config.channels_last
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=fmt)
        self.net = dist.wrap(self.model, self.device)
        self.teacher = None
        if teacher is not None:
            self.teacher = teacher.to(self.device, memory_format=fmt).eval().requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._make_optimizer()
        self.scheduler = make_scheduler(self.optimizer, self.config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self._warned: set[str] = set()

    # -- construction -------------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if not self.params:
            raise ConfigError("the model has no trainable parameters")
        try:
            make = OPTIMIZERS[c.optimizer]
        except KeyError:
            raise ConfigError(f"optimizer={c.optimizer!r} is not one of {', '.join(map(repr, OPTIMIZERS))}") from None
        return make(self.params, c)

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned and dist.is_main():
            warnings.warn(msg, stacklevel=3)
        self._warned.add(key)

    # -- state ----------------------------------------------------------------------------------------
    def components(self) -> dict[str, Any]:
        """What a checkpoint saves and a resume restores, by name (see `Run.save_state`)."""
        return {"model": {"model": self.model}, "optimizers": {"optimizer": self.optimizer},
                "schedulers": {"scheduler": self.scheduler}, "scaler": self.scaler}

    def _extra(self) -> dict[str, Any]:
        return {"kind": "train", "history": list(self.history), "config": config_to_dict(self.config),
                "arch_digest": self.arch.digest if self.arch is not None else None}

    def _resume(self) -> None:
        """Continue the run's checkpoint when resuming (a checkpoint of another architecture or of a
        search raises RunError before anything is restored)."""
        if self.run is None or not self.run.resume_requested or not self.run.checkpoint_path.exists():
            return
        source = str(self.run.checkpoint_path)
        saved = self.run.final_state().get("extra") or {}
        theirs = saved.get("arch_digest")
        if self.arch is not None and theirs is not None and theirs != self.arch.digest:
            raise RunError(f"{source} was written for another architecture (digest {theirs}, this one is "
                           f"{self.arch.digest}): resume with the same architecture, or pass --overwrite")
        if saved.get("kind") != "train":
            raise RunError(f"{source} is not a training checkpoint (kind {saved.get('kind')!r}): "
                           f"pass --overwrite or choose another --out")
        resumed = self.run.resume(**self.components(), map_location=self.device)
        self.epoch = resumed.epoch
        self.history = list(resumed.extra.get("history", []))

    # -- training -------------------------------------------------------------------------------------
    def fit(self, train: Split, test: Split | None = None) -> dict[str, Any]:
        """Train until `config.epochs` epochs are done (continuing a checkpoint when resuming).

        Returns the final metrics: epochs, train_loss, train_top1, test_top1/top5/loss (when `test` is
        given), images_per_s (mean over the epochs trained), weight_digests (one per rank).
        """
        c = self.config
        ws = dist.world_size()
        if c.batch_size % ws:
            raise ConfigError(f"batch_size={c.batch_size} is the global batch and must divide by the "
                              f"{ws} ranks: use a multiple of {ws}")
        loader = make_loader(train, c.batch_size // ws, train=True, device=self.device, augment=c.augment,
                             cutout=c.cutout, seed=self.seed, channels_last=self.channels_last,
                             num_workers=c.num_workers)
        if len(loader) == 0:
            raise DataError(f"the training split has {len(train)} images, fewer than one batch of "
                            f"{c.batch_size}: lower --batch-size")
        self._resume()
        if c.drop_path > 0 and not hasattr(self.model, "drop_path_prob"):
            self._warn_once("drop_path", f"drop_path={c.drop_path} is ignored: "
                            f"{type(self.model).__name__} has no drop_path_prob attribute")
        for epoch in range(self.epoch, c.epochs):
            loader.set_epoch(epoch)
            if hasattr(self.model, "drop_path_prob"):
                self.model.drop_path_prob = c.drop_path * epoch / c.epochs
            lr = self.optimizer.param_groups[0]["lr"]
            stats = self.train_epoch(loader, epoch)
            self.scheduler.step()
            self.epoch = epoch + 1
            record: dict[str, Any] = {"epoch": self.epoch, "lr": lr, **{f"train_{k}": v for k, v in stats.items()}}
            last = self.epoch == c.epochs
            if test is not None and (last or (c.eval_every and self.epoch % c.eval_every == 0)):
                dist.sync_buffers(self.model)
                ev = self.evaluate(test)
                record.update({"test_top1": ev["top1"], "test_top5": ev["top5"], "test_loss": ev["loss"]})
            self.history.append(record)
            if self.run is not None:  # the Run logs one line per epoch (nas_common.log)
                self.run.log(self.epoch, epoch=self.epoch,
                             **{canonical_metric(k, "train"): v for k, v in record.items() if k != "epoch"})
                self.run.save_state(self.epoch, **self.components(), extra=self._extra())
            elif self.verbose and dist.is_main():
                self._print(record)
        dist.sync_buffers(self.model)
        return self._final()

    def train_epoch(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], epoch: int) -> dict[str, float]:
        """One pass over `loader`; returns train loss, top1 (percent), images, seconds, images_per_s."""
        c = self.config
        dev = self.device
        self.net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.float64, device=dev)
        bad_step = torch.full((), -1, dtype=torch.long, device=dev)  # first step with a non-finite loss
        count = 0
        total = len(loader) if hasattr(loader, "__len__") else None
        it = self.run.progress(loader, desc=f"epoch {epoch + 1}/{c.epochs}", total=total) if self.run else loader
        t0 = time.perf_counter()
        step = 0
        for step, (x, y) in enumerate(it, start=1):
            loss, logits = self._loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.scale(loss).backward()
                if c.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                if c.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
                self.optimizer.step()
            ld = loss.detach()
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(ld), step, bad_step)
            loss_sum += ld.double() * y.shape[0]
            correct += (logits.detach().argmax(dim=1) == y).sum()
            count += y.shape[0]
            if c.nan_check_every and step % c.nan_check_every == 0:
                self._check_loss(bad_step, epoch)
        self._check_loss(bad_step, epoch)
        self._check_weights(epoch, step)
        sums = dist.all_reduce_(torch.stack([loss_sum, correct,
                                               torch.tensor(float(count), dtype=torch.float64, device=dev)]))
        loss_total, correct_total, n = sums.tolist()  # the one host sync of the epoch
        seconds = time.perf_counter() - t0
        n = max(n, 1.0)
        return {"loss": loss_total / n, "top1": 100.0 * correct_total / n, "images": int(n),
                "time_s": seconds, "images_per_s": n / seconds if seconds > 0 else 0.0}

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        with _autocast(self.device, self.amp_dtype):
            logits, aux = split_output(self.net(x))
            if self.teacher is not None:
                with torch.no_grad():
                    t_logits, _ = split_output(self.teacher(x))
                loss = distill_loss(logits.float(), t_logits.float(), y, alpha=c.kd_alpha, T=c.kd_temperature,
                                    label_smoothing=c.label_smoothing)
            else:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=c.label_smoothing)
            if aux is not None:  # always part of the graph (weight 0 included), so DDP sees every parameter used
                loss = loss + c.auxiliary_weight * F.cross_entropy(aux.float(), y, label_smoothing=c.label_smoothing)
        return loss, logits

    # -- divergence -----------------------------------------------------------------------------------
    def _check_loss(self, bad_step: torch.Tensor, epoch: int) -> None:
        """Raise TrainingDiverged if any rank saw a non-finite loss (one host read)."""
        first = int(dist.all_reduce_(bad_step.clone(), "max").item())
        if first >= 0:
            self._diverged(f"the loss became NaN or infinite at epoch {epoch + 1} step {first}", epoch)

    def _check_weights(self, epoch: int, step: int) -> None:
        ok = torch.stack([torch.isfinite(p).all() for p in self.params]).all()
        if not bool(ok):
            self._diverged(f"a weight became NaN or infinite during epoch {epoch + 1} (by step {step})", epoch)

    def _diverged(self, what: str, epoch: int) -> None:
        if self.run is not None and self.epoch > 0 and self.run.checkpoint_path.exists():
            keep = f"the last good checkpoint is {self.run.checkpoint_path} (epoch {self.epoch})"
        else:
            keep = "no checkpoint was written (it diverged in the first epoch)"
        raise TrainingDiverged(f"{what}; {keep}; lower the learning rate (--lr {self.config.lr / 10:g}) or "
                               f"enable gradient clipping (-o grad_clip=5), and start again with --overwrite")

    # -- evaluation and results ---------------------------------------------------------------------
    def evaluate(self, split: Split) -> dict[str, float]:
        """Top-1/top-5 (percent) and loss of the model on `split` (all ranks take part)."""
        return evaluate(self.model, split, device=self.device, batch_size=self.config.eval_batch_size,
                        amp=self.amp_dtype, channels_last=self.channels_last)

    def _final(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": self.epoch}
        if self.history:
            last = self.history[-1]
            out.update({k: v for k, v in last.items() if k.startswith(("train_loss", "train_top1", "test_"))})
            speeds = [h["train_images_per_s"] for h in self.history if "train_images_per_s" in h]
            if speeds:
                out["images_per_s"] = sum(speeds) / len(speeds)
        digests = dist.gather_objects(dist.weight_digest(self.model))
        out["weight_digests"] = digests
        if len(set(digests)) > 1:
            raise RunError(f"the ranks hold different weights after training ({digests}): a bug in the data-"
                           f"parallel setup; please report it with the command line")
        return out

    def _print(self, r: dict[str, Any]) -> None:
        test = (f"  test top1 {r['test_top1']:6.2f}  top5 {r['test_top5']:6.2f}  loss {r['test_loss']:.4f}"
                if "test_top1" in r else "")
        log.info(f"epoch {r['epoch']:4d}/{self.config.epochs}  lr {r['lr']:.4g}  train loss "
                   f"{r['train_loss']:.4f}  top1 {r['train_top1']:6.2f}{test}  "
                   f"{r['train_images_per_s']:.0f} img/s")
