"""Train an architecture into a run directory: the function behind `nas train` and the harness.

    from nas_common.train import train_arch
    res = train_arch("resnet20", "cifar10-mini", out="runs/r20", preset="tiny", overrides=["epochs=3"])
    res.metrics["test_top1"], res.model, res.run_dir          # also: nas_common.load_model("runs/r20")

Everything that can be wrong with the input (the architecture, the dataset, the teacher, the config,
an output directory holding another run or another architecture) is checked before anything is
written, so a refused command leaves the directory as it was.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import dist
from ..arch import Arch, get_arch, load_arch
from ..config import config_to_dict, resolve_config
from ..data import Dataset, get_dataset
from ..device import resolve_device
from ..errors import ArchFileError, ConfigError, DataError, RunError
from ..registry import ARCHS
from ..runs import Run, check_keep, load_model, seed_everything
from .config import TrainConfig
from .trainer import Trainer


@dataclass
class TrainResult:
    """What `train_arch` returns: the trained model (eval mode), its arch, final metrics, the run dir."""

    model: nn.Module
    arch: Arch
    metrics: dict[str, Any]
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def check_seed(seed: object) -> int:
    """`seed` as an integer in [0, 2**31) (what Python, NumPy and torch all accept), or a ConfigError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ConfigError(f"seed must be an integer in [0, 2**31), got {seed!r}")
    return seed


def fit_arch_to_dataset(arch: Arch, dataset: Dataset, *, adapt: bool = False, what: str = "architecture") -> Arch:
    """`arch` with net.num_classes/input set from `dataset` when `adapt`, else checked against it."""
    want_c, want_in = dataset.num_classes, list(dataset.input_shape)
    have_c, have_in = arch.net.get("num_classes"), list(arch.net.get("input", []))
    if have_c == want_c and have_in == want_in:
        return arch
    if not adapt:
        raise DataError(
            f"the {what} is built for {have_c} classes and inputs {have_in}, but dataset {dataset.name!r} has "
            f"{want_c} classes and inputs {want_in}: use the matching dataset, or pass --adapt to rebuild the "
            f"{what} for this dataset (a built-in name is adapted automatically)")
    adapted = arch.replace(net={**arch.net, "num_classes": want_c, "input": want_in}, costs={})
    return adapted.with_costs() if arch.costs else adapted


def resolve_train_config(preset: str | None = "paper", config_file: Any = None,
                         overrides: Iterable[str] | Mapping[str, Any] = ()) -> TrainConfig:
    return resolve_config(TrainConfig, preset=preset, file=config_file, overrides=overrides)


def _teacher(teacher: nn.Module | str | Path | None, dataset: Dataset) -> tuple[nn.Module | None, str]:
    if teacher is None:
        return None, ""
    if isinstance(teacher, nn.Module):
        return teacher, type(teacher).__name__
    p = Path(teacher)
    if not (p / "model.pt").is_file():
        raise RunError(f"--teacher {str(p)!r} is not a run directory with a trained model (model.pt): give the "
                       f"--out of a finished `nas train`")
    fit_arch_to_dataset(load_arch(p / "arch.json"), dataset, what="teacher")
    return load_model(p), str(p)


def train_arch(arch: str | Path | Arch, dataset: str | Dataset, *, out: str | Path,
               config: TrainConfig | None = None, preset: str | None = "paper", config_file: Any = None,
               overrides: Iterable[str] | Mapping[str, Any] = (), seed: int = 0,
               device: torch.device | str | None = None, teacher: nn.Module | str | Path | None = None,
               resume: bool = False, overwrite: bool = False, adapt: bool = False, data_dir: str | None = None,
               download: bool = False, progress: bool = True, verbose: bool = False,
               interrupt_after: int | None = None, keep_best: int = 1) -> TrainResult:
    """Train `arch` (a built-in name, an arch.json, a run directory or an Arch) on `dataset` into `out`.

    Writes config.toml, arch.json, metrics.jsonl, tb/, checkpoints/last.pt (every epoch), model.pt and
    result.json. A built-in name is sized for the dataset (classes, input shape); a file must match it
    unless `adapt`. `teacher` (an nn.Module or a run directory) turns on knowledge distillation.
    Under torchrun it trains data-parallel; rank 0 writes. `keep_best` keeps checkpoints/best.pt
    (the epoch with the best test/top1) and, when > 1, the `keep_best` best epochs' checkpoints.
    """
    from ..config import check_record_file
    from ..costs import check_fits

    check_seed(seed)
    check_keep(keep_best)
    if str(out).strip() == "":
        raise RunError("--out is empty: name the run directory to write (e.g. --out runs/train1)")
    if not isinstance(arch, (str, Path, Arch)):
        raise ConfigError(f"train_arch takes an Arch, an arch.json path or a built-in name, got {type(arch).__name__}")
    if not isinstance(dataset, (str, Dataset)):
        hint = " (a Task: pass task.dataset)" if hasattr(dataset, "dataset") else ""
        raise ConfigError(f"train_arch takes a Dataset or a dataset name, got {type(dataset).__name__}{hint}")
    if config is not None and not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
    builtin = isinstance(arch, str) and arch in ARCHS
    a = get_arch(arch)
    ds = dataset if isinstance(dataset, Dataset) else get_dataset(dataset, data_dir=data_dir, download=download)
    a = fit_arch_to_dataset(a, ds, adapt=adapt or builtin)
    if "macs" not in a.costs or "params" not in a.costs:
        a = a.with_costs()
    if config_file is not None:
        check_record_file(config_file, kind="train")
    cfg = config if config is not None else resolve_train_config(preset, config_file, overrides)
    teacher_model, teacher_name = _teacher(teacher, ds)
    dev = resolve_device(device)
    check_fits(a.costs["params"], dev, copies=4, what=f"{a.space} network")  # weights, grads, momentum, slack
    dist.init_from_env(dev)
    ws = dist.world_size()
    if cfg.batch_size % ws:
        raise ConfigError(f"batch_size={cfg.batch_size} is the global batch and must divide by the {ws} ranks: "
                          f"use a multiple of {ws}")
    if len(ds.train) < cfg.batch_size:
        raise DataError(f"dataset {ds.name!r} has {len(ds.train)} training images, fewer than one batch of "
                        f"{cfg.batch_size}: lower --batch-size")
    out = Path(out)
    if resume and not overwrite and (out / "arch.json").is_file():
        try:
            old = load_arch(out / "arch.json")
        except ArchFileError as e:
            raise RunError(f"cannot resume {str(out)!r}: {e}; pass --overwrite to start again") from None
        if old != a:
            raise RunError(f"{str(out)!r} holds a run of another architecture ({old.space} {old.digest}, not "
                           f"{a.space} {a.digest}): resume with the same architecture, or pass --overwrite")
    record = {"kind": "train", "arch": a.digest, "space": a.space, "dataset": ds.name, "seed": seed,
              "preset": preset or "", "teacher": teacher_name, "config": config_to_dict(cfg)}
    run = Run.create(out, record, resume=resume, overwrite=overwrite, interrupt_after=interrupt_after,
                     progress=progress)
    run.track_best("test/top1", "max", keep=keep_best)
    try:
        run.save_arch(a)
        seed_everything(seed)
        model = a.build()
        trainer = Trainer(model, cfg, run=run, device=dev, teacher=teacher_model, seed=seed, arch=a,
                          verbose=verbose)
        metrics = trainer.fit(ds.train, ds.test)
        run.save_model(trainer.model, a)
        run.write_result({"kind": "train", "arch": a.to_dict(), "costs": a.costs, "dataset": ds.name,
                          "preset": preset or "", "teacher": teacher_name, "config": config_to_dict(cfg),
                          "metrics": metrics}, device=dev, seed=seed)
        return TrainResult(trainer.model.eval(), a, metrics, out, trainer.history)
    finally:
        run.close()


def train(arch: str | Path | Arch, dataset: str | Dataset = "cifar10-mini", *, out: str | Path | None = None,
          preset: str | None = "paper", epochs: int | None = None, batch_size: int | None = None,
          lr: float | None = None, overrides: Iterable[str] | Mapping[str, Any] = (), **kwargs: Any) -> TrainResult:
    """Train an architecture in one call: `nas_common.train("resnet20", dataset="cifar10-mini",
    preset="tiny", epochs=3)`. `epochs`, `batch_size` and `lr` override the preset; `out` defaults to
    runs/train-DIGEST-TIME; every other keyword goes to `train_arch` (seed, device, teacher, resume,
    overwrite, config, config_file, adapt, keep_best, ...). Returns the TrainResult (`.model`, `.metrics`,
    `.arch`, `.run_dir`)."""
    from ..search import default_out

    ov = dict(overrides) if isinstance(overrides, Mapping) else dict(
        item.partition("=")[::2] for item in overrides)
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if value is not None:
            ov[key] = value
    if out is None:
        a = arch if isinstance(arch, Arch) else None
        out = default_out(f"train-{a.digest if a is not None else Path(str(arch)).stem}")
    return train_arch(arch, dataset, out=out, preset=preset, overrides=ov, **kwargs)
