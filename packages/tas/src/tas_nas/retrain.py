"""Retraining a TAS-pruned network: from scratch, with knowledge distillation from the unpruned one.

TAS trains the searched network from random initialisation and transfers knowledge from the trained
unpruned network by KD: (1 - alpha) * CE + alpha * T^2 * KL(teacher/T || student/T), alpha 0.9, T 4
(the loss is nas_common's `distill_loss`; the loop is nas_common's Trainer). The flow:

    teacher = train_teacher("resnet56", "cifar10", out="runs/r56")              # once per base network
    res = retrain_with_kd("runs/tas/arch.json", "cifar10", out="runs/tas-kd", teacher_dir="runs/r56")

or, from the command line, `nas train runs/tas/arch.json --teacher runs/r56 ...`. Without a teacher,
`retrain_with_kd` trains the unpruned base network first (into `<out>-teacher`, reused when it is
already there), as TAS's pipeline does.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from nas_common import Arch, Dataset, NASError, Task, get_arch
from nas_common.train import TrainResult, train_arch

from .model import base_spec

__all__ = ["train_teacher", "retrain_with_kd", "teacher_arch"]

RETRAIN_PRESET = "tas"  # nas_common's TrainConfig preset: TAS's recipe (300 epochs, batch 256, 5 warm-up)


def teacher_arch(arch: Arch, base: str | None = None) -> Arch:
    """The unpruned base network of a TAS-pruned `arch` (its provenance names the base), same net sizes."""
    name = base or (arch.provenance or {}).get("base")
    if not name:
        raise NASError("cannot tell which unpruned network this architecture was pruned from: pass base="
                       "'resnet56' (or the base the search used), or a trained teacher_dir")
    return Arch("resnet", base_spec(str(name)), {**arch.net})


def _dataset_and_device(data: Task | Dataset | str, device: Any) -> tuple[Dataset | str, Any]:
    if isinstance(data, Task):
        return data.dataset, device if device is not None else data.device
    return data, device


def train_teacher(base: str | Arch, data: Task | Dataset | str, *, out: str | Path, preset: str | None = RETRAIN_PRESET,
                  overrides: Iterable[str] | Mapping[str, Any] = (), seed: int = 0,
                  device: torch.device | str | None = None, resume: bool = False, overwrite: bool = False,
                  progress: bool = True) -> TrainResult:
    """Train the unpruned network (`"resnet56"`, or an Arch) into `out`: the KD teacher."""
    ds, dev = _dataset_and_device(data, device)
    arch = base if isinstance(base, Arch) else Arch("resnet", base_spec(base), _net_for(ds))
    return train_arch(arch, ds, out=out, preset=preset, overrides=overrides, seed=seed, device=dev,
                      resume=resume, overwrite=overwrite, adapt=True, progress=progress)


def _net_for(ds: Dataset | str) -> dict[str, Any]:
    from nas_common import get_dataset

    d = ds if isinstance(ds, Dataset) else get_dataset(ds)
    return {"num_classes": d.num_classes, "input": list(d.input_shape)}


def retrain_with_kd(arch: str | Path | Arch, data: Task | Dataset | str, *, out: str | Path,
                    teacher_dir: str | Path | None = None, base: str | None = None,
                    preset: str | None = RETRAIN_PRESET, overrides: Iterable[str] | Mapping[str, Any] = (),
                    teacher_overrides: Iterable[str] | Mapping[str, Any] | None = None,
                    kd_alpha: float = 0.9, kd_temperature: float = 4.0, seed: int = 0,
                    device: torch.device | str | None = None, resume: bool = False, overwrite: bool = False,
                    progress: bool = True) -> TrainResult:
    """Train the pruned `arch` from scratch into `out` with KD from a trained unpruned network.

    `teacher_dir`: a run directory of the trained unpruned network (`nas train resnet56 ...`). When it is
    None, the teacher is `<out>-teacher`, trained there first (same recipe, `teacher_overrides` or else
    `overrides`) unless it already holds a trained model. Returns the student's TrainResult.
    """
    a = get_arch(arch)
    ds, dev = _dataset_and_device(data, device)
    if teacher_dir is None:
        teacher_dir = Path(f"{Path(out)}-teacher")
        if not (teacher_dir / "model.pt").is_file():
            t_over = overrides if teacher_overrides is None else teacher_overrides
            train_teacher(teacher_arch(a, base), ds, out=teacher_dir, preset=preset, overrides=t_over, seed=seed,
                          device=dev, resume=True, progress=progress)
    kd = {"kd_alpha": kd_alpha, "kd_temperature": kd_temperature}
    over = {**_as_mapping(overrides), **kd}
    return train_arch(a, ds, out=out, preset=preset, overrides=over, seed=seed, device=dev, teacher=teacher_dir,
                      resume=resume, overwrite=overwrite, progress=progress)


def _as_mapping(overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(overrides, Mapping):
        return dict(overrides)
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise NASError(f"override {item!r} must look like key=value (e.g. epochs=3)")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out
