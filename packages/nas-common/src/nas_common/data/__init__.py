"""Datasets by name, splits for bilevel search, and loaders (device-resident for small datasets).

    ds = get_dataset("cifar10-mini")                    # bundled, offline
    ds = get_dataset("cifar10", data_dir="~/data", download=True)
    ds = get_dataset("npz:/path/to/file.npz")           # x_train, y_train, x_test, y_test (uint8 HWC)
    train, val = ds.train.split(0.5, seed=0)            # the 50/50 split of bilevel search
    for x, y in make_loader(train, 64, train=True, device="cpu", cutout=16): ...
"""
from .datasets import Dataset, Split, get_dataset, list_datasets, register_dataset
from .loader import DeviceLoader, make_loader
from .transforms import cutout, random_crop_flip

__all__ = [
    "Dataset", "Split", "get_dataset", "list_datasets", "register_dataset", "DeviceLoader", "make_loader",
    "cutout", "random_crop_flip",
]
