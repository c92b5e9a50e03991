"""The dataset registry and the in-memory dataset representation."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, RegistryError
from ..registry import DATASETS

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass
class Split:
    """One split of a dataset: uint8 images (N, C, H, W) and int64 labels, or a torch Dataset on disk.

    In-memory splits (`x` set) are served by the device-resident loader; disk splits (`source` set,
    e.g. ImageNet through ImageFolder) by a torch DataLoader.
    """

    y: torch.Tensor
    x: torch.Tensor | None = None
    source: Any = None  # torch.utils.data.Dataset yielding (float CHW normalised tensor, label)
    mean: tuple[float, ...] = CIFAR_MEAN
    std: tuple[float, ...] = CIFAR_STD
    indices: torch.Tensor | None = None  # for disk splits: which items of `source`
    # for disk splits whose `source` augments (a training part): the same items with the evaluation
    # transform, served when a loader does not augment (a held-out part of the training images)
    eval_source: Any = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def in_memory(self) -> bool:
        return self.x is not None

    def subset(self, idx: torch.Tensor | np.ndarray | list[int]) -> Split:
        idx = torch.as_tensor(idx, dtype=torch.long)
        if self.in_memory:
            return replace(self, x=self.x[idx], y=self.y[idx])
        base = self.indices if self.indices is not None else torch.arange(len(self.y))
        return replace(self, y=self.y[idx], indices=base[idx])

    def fingerprint(self) -> dict[str, Any]:
        """Its size and a digest of its labels and images (of its items' indices for data on disk): a
        search records it, so that a later scoring can check it reads the same held-out images."""
        h = hashlib.sha256()
        h.update(self.y.to(torch.int64).cpu().numpy().tobytes())
        if self.in_memory:
            h.update(self.x.contiguous().cpu().numpy().tobytes())
        elif self.indices is not None:
            h.update(self.indices.to(torch.int64).cpu().numpy().tobytes())
        return {"images": len(self), "digest": h.hexdigest()[:16]}

    def head(self, n: int) -> Split:
        return self.subset(torch.arange(min(n, len(self))))

    def split(self, fraction: float = 0.5, seed: int = 0, shuffle: bool = True, per_class: bool = False
              ) -> tuple[Split, Split]:
        """Two disjoint parts, the first with `fraction` of the items (50/50 as in DARTS' bilevel search).

        `per_class` splits each class separately (TAS); `shuffle=False` takes the first items (DARTS).
        """
        if not 0.0 < fraction < 1.0:
            raise DataError(f"split fraction must be in (0, 1), got {fraction}")
        n = len(self)
        g = torch.Generator().manual_seed(seed)
        if per_class:
            first, second = [], []
            for c in torch.unique(self.y).tolist():
                idx = torch.nonzero(self.y == c).flatten()
                if shuffle:
                    idx = idx[torch.randperm(len(idx), generator=g)]
                k = int(round(len(idx) * fraction))
                first.append(idx[:k])
                second.append(idx[k:])
            a, b = torch.cat(first).sort().values, torch.cat(second).sort().values
        else:
            order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
            k = int(n * fraction)
            a, b = order[:k], order[k:]
        if len(a) == 0 or len(b) == 0:
            raise DataError(f"cannot split {n} items with fraction {fraction}: a part would be empty")
        return self.subset(a), self.subset(b)


@dataclass
class Dataset:
    """A named dataset: train and test splits plus what a network needs to know about it."""

    name: str
    train: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    classes: list[str] = field(default_factory=list)

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> Dataset:
        """The first `n_train`/`n_test` items (micro-scale tests, quick looks)."""
        return replace(self, train=self.train.head(n_train) if n_train else self.train,
                       test=self.test.head(n_test) if n_test else self.test)


def register_dataset(name: str) -> Callable:
    """Register a factory `(data_dir, download) -> Dataset` under `name`."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    return DATASETS.names() + ["npz:PATH"]


def get_dataset(name: str, data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """The dataset `name` (see `list_datasets()`); `npz:PATH` loads any .npz with cifar10-mini's keys."""
    if not isinstance(name, str):
        raise DataError(f"a dataset is named by a string (one of {', '.join(list_datasets())}), got "
                        f"{type(name).__name__}")
    if name.startswith("npz:"):
        return load_npz(name[4:], name=name)
    try:
        factory = DATASETS.get(name)
    except RegistryError as e:
        raise DataError(f"{e} (or npz:PATH for your own arrays)") from None
    return factory(data_dir=data_dir, download=download)


def from_arrays(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                classes: list[str] | None = None, mean: tuple[float, ...] | None = None,
                std: tuple[float, ...] | None = None, source: str = "arrays") -> Dataset:
    """A Dataset from uint8 HWC (or HW) image arrays and integer labels; checks shapes and types."""
    xs = []
    for key, x in (("x_train", x_train), ("x_test", x_test)):
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise DataError(f"{source}: {key} must be images of shape (N, H, W, C), got shape {x.shape}")
        if x.dtype != np.uint8:
            raise DataError(f"{source}: {key} must be uint8 pixels 0..255, got {x.dtype}; convert with "
                            f"(x * 255).astype('uint8') if it holds floats in [0, 1]")
        xs.append(x)
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise DataError(f"{source}: x_train images are {xs[0].shape[1:]} but x_test images are {xs[1].shape[1:]}")
    for key, x in (("x_train", xs[0]), ("x_test", xs[1])):
        if len(x) == 0:
            raise DataError(f"{source}: {key} holds no images: a dataset needs training and test images")
        if min(x.shape[1:]) < 1:
            raise DataError(f"{source}: {key} images have an empty side (shape {x.shape})")
    ys = []
    for key, y, x in (("y_train", y_train, xs[0]), ("y_test", y_test, xs[1])):
        y = np.asarray(y).reshape(-1)
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: {key} must hold integer class labels, got {y.dtype}")
        if len(y) != len(x):
            raise DataError(f"{source}: {key} has {len(y)} labels for {len(x)} images")
        if len(y) and y.min() < 0:
            raise DataError(f"{source}: {key} has negative labels")
        ys.append(y.astype(np.int64))
    num_classes = int(max(ys[0].max(initial=0), ys[1].max(initial=0))) + 1
    _warn_sparse_labels(source, np.concatenate(ys), num_classes)
    c = xs[0].shape[-1]
    if mean is None or std is None:
        sample = xs[0][: 10000].astype(np.float64) / 255.0
        mean = tuple(float(m) for m in sample.mean(axis=(0, 1, 2)))
        std = tuple(float(max(s, 1e-3)) for s in sample.std(axis=(0, 1, 2)))
    tx = [torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))) for x in xs]
    ty = [torch.from_numpy(y) for y in ys]
    return Dataset(
        name=name,
        train=Split(y=ty[0], x=tx[0], mean=mean, std=std),
        test=Split(y=ty[1], x=tx[1], mean=mean, std=std),
        num_classes=num_classes,
        input_shape=(c, xs[0].shape[1], xs[0].shape[2]),
        classes=list(classes) if classes is not None else [str(i) for i in range(num_classes)],
    )


def _warn_sparse_labels(source: str, y: np.ndarray, num_classes: int) -> None:
    """Warn when the largest label is far above the others (labels 0-9 and one 999 build a 1000-class
    model): the class count is the largest label + 1."""
    if num_classes <= 2:
        return
    present = int(np.unique(y).size)
    if present * 2 < num_classes:
        import warnings

        warnings.warn(f"{source}: labels run up to {num_classes - 1} but only {present} distinct values occur, "
                      f"so the model gets {num_classes} outputs; relabel to 0..{present - 1} if that is not "
                      f"intended", stacklevel=3)


_SAVE_HINT = "save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"


def load_npz(path: str | Path, name: str | None = None, mean: tuple[float, ...] | None = None,
             std: tuple[float, ...] | None = None) -> Dataset:
    """A Dataset from a .npz of uint8 images (N, H, W[, C]) and integer labels (keys NPZ_KEYS, and
    optionally `classes`); a missing, truncated, foreign or pickled file is a one-line DataError."""
    import zipfile
    import zlib

    from ..io import check_file

    p = check_file(path, "npz file", f"a .npz with keys {', '.join(NPZ_KEYS)}", DataError)
    bad = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)
    try:
        data = np.load(p, allow_pickle=False)
    except bad as e:
        raise DataError(f"{p} is not a readable .npz file ({_first_line(e)}): {_SAVE_HINT}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"{p} holds a single array, not a .npz archive of named arrays: {_SAVE_HINT}")
    with data:
        missing = [k for k in NPZ_KEYS if k not in data.files]
        if missing:
            raise DataError(f"{p} lacks key(s) {', '.join(missing)}: it has {', '.join(data.files) or 'none'}; "
                            f"{_SAVE_HINT}")
        arrays = {}
        for k in (*NPZ_KEYS, *(["classes"] if "classes" in data.files else [])):
            try:
                arrays[k] = data[k]
            except ValueError as e:
                if "allow_pickle" in str(e) or "Object arrays" in str(e):
                    raise DataError(f"{p}: {k} is an object array (pickled Python objects), which is not "
                                    f"loaded for safety: store numbers, e.g. np.asarray(x, dtype=np.uint8)") from None
                raise DataError(f"{p}: {k} cannot be read ({_first_line(e)}): the file may be truncated") from None
            except bad as e:
                raise DataError(f"{p}: {k} cannot be read ({_first_line(e)}): the file is truncated or "
                                f"corrupt; {_SAVE_HINT}") from None
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    return from_arrays(name or f"npz:{p}", *(arrays[k] for k in NPZ_KEYS), classes=classes, mean=mean, std=std,
                       source=str(p))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


@register_dataset("cifar10-mini")
def cifar10_mini(data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """4,660 training and 500 test images of CIFAR-10 (the first of the official batches), bundled."""
    ref = resources.files("nas_common.data") / "_files" / "cifar10-mini.npz"
    with resources.as_file(ref) as p:
        return load_npz(p, name="cifar10-mini", mean=CIFAR_MEAN, std=CIFAR_STD)


def _need_dir(name: str, data_dir: str | Path | None, download: bool) -> Path:
    if data_dir is None:
        raise DataError(f"dataset {name!r} needs --data-dir (where its files are, or where to put them with "
                        f"--download); for an offline try use cifar10-mini")
    p = Path(data_dir).expanduser()
    if not p.exists() and not download:
        raise DataError(f"--data-dir {str(p)!r} does not exist: create it and pass --download, or point to "
                        f"the folder holding {name}")
    return p


def _torchvision(name: str, cls_name: str, data_dir: Any, download: bool, split_kw: str = "train") -> Dataset:
    import torchvision

    root = _need_dir(name, data_dir, download)
    cls = getattr(torchvision.datasets, cls_name)
    parts = []
    for train in (True, False):
        kw = {"train": train} if split_kw == "train" else {"split": "train" if train else "test"}
        try:
            parts.append(cls(str(root), download=download, **kw))
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
            raise DataError(f"{name} not found in {str(root)!r} ({e}); pass --download to fetch it there") from None
    tr, te = parts
    if split_kw == "train":  # CIFAR: data (N, H, W, C) uint8, targets list
        arrays = (tr.data, np.asarray(tr.targets), te.data, np.asarray(te.targets))
        classes = list(tr.classes)
    else:  # SVHN: data (N, C, H, W), labels
        arrays = (tr.data.transpose(0, 2, 3, 1), tr.labels, te.data.transpose(0, 2, 3, 1), te.labels)
        classes = [str(i) for i in range(10)]
    return from_arrays(name, *arrays, classes=classes, mean=_STATS[name][0], std=_STATS[name][1], source=str(root))


_STATS = {
    "cifar10": (CIFAR_MEAN, CIFAR_STD),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


@register_dataset("cifar10")
def cifar10(data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """CIFAR-10 through torchvision (50,000 train / 10,000 test), kept in memory."""
    return _torchvision("cifar10", "CIFAR10", data_dir, download)


@register_dataset("cifar100")
def cifar100(data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """CIFAR-100 through torchvision, kept in memory."""
    return _torchvision("cifar100", "CIFAR100", data_dir, download)


@register_dataset("svhn")
def svhn(data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """SVHN (train / test) through torchvision, kept in memory."""
    return _torchvision("svhn", "SVHN", data_dir, download, split_kw="split")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_image(path: str) -> Any:
    """An RGB PIL image from `path`; an unreadable or corrupt file is a DataError naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError (an OSError), truncated data
        raise DataError(f"image {path!r} cannot be read ({_first_line(e)}): remove or replace the file") from None


def _ImageFolder() -> Any:
    """torchvision's ImageFolder reading through `read_image` (so a corrupt image names its file)."""
    import functools

    import torchvision

    return functools.partial(torchvision.datasets.ImageFolder, loader=read_image)


@register_dataset("imagefolder")
def imagefolder(data_dir: str | Path | None = None, download: bool = False, image_size: int = 224) -> Dataset:
    """Any ImageFolder tree (ImageNet included): DATA_DIR/train/<class>/*.jpg and DATA_DIR/val/<class>/*.

    Images stay on disk and are served by a DataLoader with the standard ImageNet transforms.
    """
    from torchvision import transforms as T

    if download:
        raise DataError("imagefolder cannot be downloaded: point --data-dir at a folder with train/ and val/")
    root = _need_dir("imagefolder", data_dir, False)
    splits = {}
    for part, alt in (("train", None), ("val", "test")):
        d = root / part
        if not d.is_dir() and alt is not None and (root / alt).is_dir():
            d = root / alt
        if not d.is_dir():
            raise DataError(f"{str(root)!r} has no {part}/ folder: an imagefolder dataset needs "
                            f"DATA_DIR/train/<class>/... and DATA_DIR/val/<class>/...")
        splits[part] = d
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    folder = _ImageFolder()
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm])
    try:
        tr = folder(str(splits["train"]), transform=train_tf)
        te = folder(str(splits["val"]), transform=test_tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f"cannot read image folders under {str(root)!r}: {e}") from None
    if tr.classes != te.classes:
        raise DataError(f"{root}: train/ and val/ have different class folders")
    return Dataset(
        name="imagefolder",
        train=Split(y=torch.as_tensor(tr.targets), source=tr, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    eval_source=folder(str(splits["train"]), transform=test_tf)),
        test=Split(y=torch.as_tensor(te.targets), source=te, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        num_classes=len(tr.classes),
        input_shape=(3, image_size, image_size),
        classes=list(tr.classes),
    )
