"""Retraining a TAS-pruned network: from scratch, with knowledge distillation from the unpruned one.

TAS trains the searched network from random initialisation and transfers knowledge from the trained
unpruned network by KD: (1 - alpha) * CE + alpha * T^2 * KL(teacher/T || student/T), alpha 0.9, T 4
(the loss is nas_common's `distill_loss`; the loop is nas_common's Trainer). alpha and T come from the
search's config (`-o kd_alpha=... -o kd_temperature=...` on `nas search tas`, carried in the arch's
provenance), unless given here. The recipe (`RECIPES`, chosen by the network's kind):

    cifar     nas_common's `tas` TrainConfig preset: 300 epochs (5 of them warm-up), batch 256, SGD
              Nesterov 0.1, momentum 0.9, wd 5e-4, cosine (`configs/opts/CIFAR-E300-W5-L1-COS.config`)
    imagenet  the same with 120 + 5 warm-up epochs and wd 1e-4 (`configs/opts/ImageNet-E120-Cos-Soft.config`)

The flow:

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
from nas_common.registry import Registry
from nas_common.train import TrainResult, train_arch

from .config import TASConfig
from .model import base_spec

__all__ = ["train_teacher", "retrain_with_kd", "teacher_arch", "RECIPES", "recipe_for", "kd_settings"]

RETRAIN_PRESET = "tas"  # nas_common's TrainConfig preset: TAS's recipe (300 epochs, batch 256, 5 warm-up)

# TAS's retraining recipes by network kind: (nas_common TrainConfig preset, overrides on it)
RECIPES: Registry[tuple[str, dict[str, Any]]] = Registry("TAS retraining recipe")
RECIPES.register("cifar", (RETRAIN_PRESET, {}))
RECIPES.register("imagenet", (RETRAIN_PRESET, {"epochs": 125, "warmup_epochs": 5, "weight_decay": 1e-4}))


def recipe_for(arch: Arch) -> tuple[str, dict[str, Any]]:
    """The (preset, overrides) of TAS's retraining recipe for `arch` (by its spec's kind: cifar/imagenet)."""
    preset, over = RECIPES.get(str(arch.spec.get("kind", "cifar")))
    return preset, dict(over)


def kd_settings(arch: Arch, kd_alpha: float | None = None, kd_temperature: float | None = None
                ) -> dict[str, float]:
    """KD's alpha and T: the arguments when given, else the search's (the arch's provenance), else TAS's."""
    searched = (arch.provenance or {}).get("retrain") or {}
    default = TASConfig()
    alpha = kd_alpha if kd_alpha is not None else searched.get("kd_alpha", default.kd_alpha)
    temp = kd_temperature if kd_temperature is not None else searched.get("kd_temperature", default.kd_temperature)
    return {"kd_alpha": float(alpha), "kd_temperature": float(temp)}


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


def train_teacher(base: str | Arch, data: Task | Dataset | str, *, out: str | Path, preset: str | None = None,
                  overrides: Iterable[str] | Mapping[str, Any] = (), seed: int = 0,
                  device: torch.device | str | None = None, resume: bool = False, overwrite: bool = False,
                  progress: bool = True) -> TrainResult:
    """Train the unpruned network (`"resnet56"`, or an Arch) into `out`: the KD teacher.

    `preset` None: TAS's recipe for the network's kind (`RECIPES`), `overrides` on top.
    """
    ds, dev = _dataset_and_device(data, device)
    arch = base if isinstance(base, Arch) else Arch("resnet", base_spec(base), _net_for(ds))
    preset, over = _recipe(arch, preset, overrides)
    return train_arch(arch, ds, out=out, preset=preset, overrides=over, seed=seed, device=dev,
                      resume=resume, overwrite=overwrite, adapt=True, progress=progress)


def _recipe(arch: Arch, preset: str | None, overrides: Iterable[str] | Mapping[str, Any]
            ) -> tuple[str | None, dict[str, Any]]:
    """(preset, overrides): TAS's recipe for the arch with `overrides` on top, or `preset` as given."""
    if preset is not None:
        return preset, _as_mapping(overrides)
    preset, over = recipe_for(arch)
    return preset, {**over, **_as_mapping(overrides)}


def _net_for(ds: Dataset | str) -> dict[str, Any]:
    from nas_common import get_dataset

    d = ds if isinstance(ds, Dataset) else get_dataset(ds)
    return {"num_classes": d.num_classes, "input": list(d.input_shape)}


def retrain_with_kd(arch: str | Path | Arch, data: Task | Dataset | str, *, out: str | Path,
                    teacher_dir: str | Path | None = None, base: str | None = None,
                    preset: str | None = None, overrides: Iterable[str] | Mapping[str, Any] = (),
                    teacher_overrides: Iterable[str] | Mapping[str, Any] | None = None,
                    kd_alpha: float | None = None, kd_temperature: float | None = None, seed: int = 0,
                    device: torch.device | str | None = None, resume: bool = False, overwrite: bool = False,
                    progress: bool = True) -> TrainResult:
    """Train the pruned `arch` from scratch into `out` with KD from a trained unpruned network.

    `teacher_dir`: a run directory of the trained unpruned network (`nas train resnet56 ...`). When it is
    None, the teacher is `<out>-teacher`, trained there first (same recipe, `teacher_overrides` or else
    `overrides`) unless it already holds a trained model. `preset` None: TAS's recipe for the network's
    kind (`RECIPES`). `kd_alpha` / `kd_temperature` None: the search's (`kd_settings`); a `kd_alpha` in
    `overrides` counts as given. Returns the student's TrainResult.
    """
    a = get_arch(arch)
    ds, dev = _dataset_and_device(data, device)
    if teacher_dir is None:
        teacher_dir = Path(f"{Path(out)}-teacher")
        if not (teacher_dir / "model.pt").is_file():
            t_over = overrides if teacher_overrides is None else teacher_overrides
            train_teacher(teacher_arch(a, base), ds, out=teacher_dir, preset=preset, overrides=t_over, seed=seed,
                          device=dev, resume=True, progress=progress)
    given = _as_mapping(overrides)
    kd = kd_settings(a, kd_alpha if kd_alpha is not None else given.get("kd_alpha"),
                     kd_temperature if kd_temperature is not None else given.get("kd_temperature"))
    s_preset, over = _recipe(a, preset, {**given, **kd})
    return train_arch(a, ds, out=out, preset=s_preset, overrides=over, seed=seed, device=dev, teacher=teacher_dir,
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
