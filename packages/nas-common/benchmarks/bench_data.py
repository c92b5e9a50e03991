"""Device-resident loader vs a torchvision DataLoader over the same cifar10-mini arrays (issue 3).

Both serve augmented (pad-4 crop + flip), normalised float batches of 64; the DataLoader uses the
standard torchvision transforms per image (PIL, ToTensor, Normalize) with workers.

    python packages/nas-common/benchmarks/bench_data.py [--epochs 3] [--workers 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from nas_common.benchmarking import markdown_table
from nas_common.data import get_dataset, make_loader
from nas_common.data.datasets import CIFAR_MEAN, CIFAR_STD


class ArrayDataset(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y
        self.tf = T.Compose([T.ToPILImage(), T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                             T.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.tf(self.x[i]), int(self.y[i])


def images_per_s(loader, epochs: int) -> float:  # noqa: ANN001
    n = 0
    t0 = time.perf_counter()
    for e in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(e)
        for x, _y in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    ds = get_dataset("cifar10-mini")
    dev_loader = make_loader(ds.train, 64, train=True, device="cpu")
    x_hwc = ds.train.x.permute(0, 2, 3, 1).numpy()
    tv = DataLoader(ArrayDataset(x_hwc, ds.train.y.numpy()), batch_size=64, shuffle=True, drop_last=True,
                    num_workers=args.workers, persistent_workers=args.workers > 0)
    images_per_s(dev_loader, 1)  # warm-up
    a = images_per_s(dev_loader, args.epochs)
    b = images_per_s(tv, args.epochs)
    print(markdown_table(["loader", "images/s", "speed-up"],
                         [["nas_common DeviceLoader (cpu)", a, a / b],
                          [f"torchvision DataLoader ({args.workers} workers)", b, 1.0]]))
    print(f"\nDeviceLoader / DataLoader = {a / b:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
