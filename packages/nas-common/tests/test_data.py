from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from nas_common.data import DeviceLoader, get_dataset, list_datasets, make_loader
from nas_common.data.transforms import cutout, random_crop_flip
from nas_common.errors import DataError


def test_cifar10_mini_is_bundled() -> None:
    ds = get_dataset("cifar10-mini")
    assert (len(ds.train), len(ds.test), ds.num_classes, ds.input_shape) == (4660, 500, 10, (3, 32, 32))
    assert ds.train.x.dtype == torch.uint8 and ds.classes[0] == "airplane"
    assert "cifar10-mini" in list_datasets() and "npz:PATH" in list_datasets()


def write_npz(path: Path, n: int = 20, hw: int = 8, c: int = 1, **drop: bool) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (n, hw, hw, c), dtype=np.uint8), "y_train": np.arange(n) % 3,
              "x_test": rng.integers(0, 255, (n // 2, hw, hw, c), dtype=np.uint8), "y_test": np.arange(n // 2) % 3}
    np.savez(path, **{k: v for k, v in arrays.items() if not drop.get(k)})
    return path


def test_npz_any_channels_and_size(tmp_path: Path) -> None:
    ds = get_dataset(f"npz:{write_npz(tmp_path / 'd.npz', c=1, hw=8)}")
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 3
    x, y = next(iter(make_loader(ds.train, 4, train=True)))
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32


@pytest.mark.parametrize("case, msg", [
    ("missing_file", "does not exist"),
    ("missing_key", "lacks key.*y_test"),
    ("float_pixels", "must be uint8"),
    ("label_mismatch", "labels for"),
    ("shape_mismatch", "x_test images are"),
])
def test_npz_errors_say_what_and_how(tmp_path: Path, case: str, msg: str) -> None:
    p = tmp_path / "bad.npz"
    if case == "missing_key":
        write_npz(p, y_test=True)
    elif case == "float_pixels":
        np.savez(p, x_train=np.zeros((4, 8, 8, 3), np.float32), y_train=np.zeros(4, int),
                 x_test=np.zeros((2, 8, 8, 3), np.float32), y_test=np.zeros(2, int))
    elif case == "label_mismatch":
        np.savez(p, x_train=np.zeros((4, 8, 8, 3), np.uint8), y_train=np.zeros(3, int),
                 x_test=np.zeros((2, 8, 8, 3), np.uint8), y_test=np.zeros(2, int))
    elif case == "shape_mismatch":
        np.savez(p, x_train=np.zeros((4, 8, 8, 3), np.uint8), y_train=np.zeros(4, int),
                 x_test=np.zeros((2, 9, 9, 3), np.uint8), y_test=np.zeros(2, int))
    with pytest.raises(DataError, match=msg) as e:
        get_dataset(f"npz:{p}")
    assert "\n" not in str(e.value)


def test_unknown_dataset_suggests() -> None:
    with pytest.raises(DataError, match="did you mean 'cifar10'"):
        get_dataset("cifar01")


def test_torchvision_dataset_needs_dir_and_download_flag(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs --data-dir"):
        get_dataset("cifar10")
    with pytest.raises(DataError, match="--download"):
        get_dataset("cifar10", data_dir=tmp_path / "nope")
    with pytest.raises(DataError, match="pass --download"):
        get_dataset("cifar10", data_dir=tmp_path)


def test_cifar10_reads_torchvision_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake CIFAR-10 batches in the real on-disk format (as torchvision's own dataset tests do)."""
    import torchvision

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 3) for i in range(1, 6)), ("test_batch", 2)]:
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": [1] * n}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    # fake files have other checksums
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    ds = get_dataset("cifar10", data_dir=tmp_path)
    assert (len(ds.train), len(ds.test), ds.input_shape, ds.classes[1]) == (15, 2, (3, 32, 32), "c1")


def test_split_is_disjoint_and_per_class_balanced() -> None:
    tr = get_dataset("cifar10-mini").train
    a, b = tr.split(0.5, seed=1, per_class=True)
    assert len(a) + len(b) == len(tr)
    counts_a, counts_b = torch.bincount(a.y, minlength=10), torch.bincount(b.y, minlength=10)
    assert (counts_a - counts_b).abs().max() <= 1
    first, _ = tr.split(0.5, shuffle=False)
    assert torch.equal(first.x, tr.x[: len(tr) // 2])


def test_loader_is_a_pure_function_of_seed_and_epoch() -> None:
    tr = get_dataset("cifar10-mini").subset(200).train
    l1 = DeviceLoader(tr, 32, train=True, seed=3, cutout=8)
    l2 = DeviceLoader(tr, 32, train=True, seed=3, cutout=8)
    l1.set_epoch(4)
    l2.set_epoch(4)
    torch.manual_seed(0)
    b1 = [x for x, _ in l1]
    torch.manual_seed(123)  # the global RNG must not matter
    b2 = [x for x, _ in l2]
    assert all(torch.equal(x, y) for x, y in zip(b1, b2, strict=False))
    l2.set_epoch(5)
    assert not torch.equal(next(iter(l2))[0], b1[0])
    assert len(l1) == 200 // 32  # drop_last in training


def test_eval_loader_covers_everything_in_order() -> None:
    te = get_dataset("cifar10-mini").test
    ys = torch.cat([y for _, y in make_loader(te, 64, train=False)])
    assert torch.equal(ys, te.y)


def test_crop_is_a_shifted_window_and_flip_mirrors() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, padding=1, generator=g, flip=False)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):
        windows = [xp[i, :, a:a + 4, b:b + 4] for a in range(3) for b in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))


def test_cutout_zeroes_a_square_per_image() -> None:
    x = torch.ones(8, 3, 32, 32)
    out = cutout(x, 16, generator=torch.Generator().manual_seed(0))
    zeros = (out[:, 0] == 0).sum(dim=(1, 2))
    assert (zeros > 0).all() and (zeros <= 256).all()
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # same square on every channel


def test_distributed_shards_are_disjoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from nas_common import dist

    tr = get_dataset("cifar10-mini").subset(100).train
    seen = []
    for r in range(2):
        monkeypatch.setattr(dist, "world_size", lambda: 2)
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        loader = DeviceLoader(tr, 10, train=True, augment=False, seed=0)
        seen.append(torch.cat([y for _, y in loader]))
        assert len(loader) == 5
    assert len(seen[0]) == len(seen[1]) == 50


def write_image_folder(root: Path, per_class: int = 3, size: int = 40) -> Path:
    """A tiny ImageFolder tree (train/ and val/, 2 classes of random RGB images)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for part in ("train", "val"):
        for c in ("cat", "dog"):
            (root / part / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / part / c / f"{i}.png")
    return root


def test_imagefolder_held_out_part_of_train_is_not_augmented(tmp_path: Path) -> None:
    """A held-out part of an ImageFolder training set (a search's validation half) is read with the
    evaluation transform, so two passes give the same tensors; training batches stay augmented."""
    from nas_common.data.datasets import imagefolder

    ds = imagefolder(write_image_folder(tmp_path / "folder"), image_size=16)
    assert (len(ds.train), len(ds.test), ds.num_classes, ds.input_shape) == (6, 6, 2, (3, 16, 16))
    _, held = ds.train.split(0.5, seed=0)

    def batches(train: bool) -> list[torch.Tensor]:
        torch.manual_seed(1)  # different draws of the random transforms between the two passes below
        first = [x for x, _ in make_loader(held, 8, train=train, num_workers=0, drop_last=False)]
        torch.manual_seed(2)
        return first + [x for x, _ in make_loader(held, 8, train=train, num_workers=0, drop_last=False)]

    a, b = batches(train=False)
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, b)
    a, b = batches(train=True)
    assert a.shape == (3, 3, 16, 16) and not torch.equal(a, b)


def test_split_fingerprint_tells_other_images_apart() -> None:
    train = get_dataset("cifar10-mini").subset(64, 8).train
    a, b = train.split(0.5, seed=0)
    again, _ = train.split(0.5, seed=0)
    other, _ = train.split(0.5, seed=1)
    assert a.fingerprint() == again.fingerprint() and a.fingerprint()["images"] == 32
    assert a.fingerprint() != other.fingerprint() and a.fingerprint() != b.fingerprint()
