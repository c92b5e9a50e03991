"""Loaders. Small datasets live on the device as uint8 tensors; batches are cut, augmented and
normalised there, with no worker processes and no per-image Python. Shuffling and augmentation are a
pure function of (seed, epoch): call `set_epoch` (as with DistributedSampler) and a resumed run sees
exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from .. import dist
from ..errors import NASError
from .datasets import Split
from .transforms import crop_flip, cutout_at, draw_augmentation


def default_workers() -> int:
    """DataLoader workers for disk datasets: the cores this process may use, shared among the ranks of
    this node under torchrun (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, local))


class DeviceLoader:
    """Iterate (x, y) batches of an in-memory split, on `device`, normalised, optionally augmented.

    Kept rather than a torch DataLoader for small datasets: the whole uint8 split sits on the device
    and a batch is one index_select plus vectorised crop/flip/cutout there, with no worker processes,
    no per-image Python and no host-to-device copy per batch (a DataLoader with transforms spends most
    of a CIFAR step in per-image work and collation: benchmarks/bench_data.py compares the two)."""

    def __init__(self, split: Split, batch_size: int, *, train: bool, device: torch.device | str = "cpu",
                 augment: bool | None = None, cutout: int = 0, seed: int = 0, drop_last: bool | None = None,
                 shuffle: bool | None = None, distributed: bool | None = None,
                 channels_last: bool = False, padding: int | None = None) -> None:
        if not split.in_memory:
            raise ValueError("DeviceLoader needs an in-memory split; use make_loader")
        self.device = torch.device(device)
        self.x = split.x.to(self.device)
        self.y = split.y.to(self.device)
        self.batch_size = int(batch_size)
        self.train = train
        self.augment = train if augment is None else augment
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        self.cutout = cutout if train else 0
        self.seed = seed
        self.epoch = 0
        self.channels_last = channels_last
        h = split.x.shape[-1]
        self.padding = padding if padding is not None else max(1, h // 8)
        self.distributed = dist.world_size() > 1 if distributed is None else distributed
        self.mean = torch.tensor(split.mean, device=self.device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(split.std, device=self.device).view(1, -1, 1, 1) * 255.0
        if self.mean.shape[1] != self.x.shape[1]:  # e.g. grey images with RGB statistics
            self.mean = self.mean.mean(1, keepdim=True).expand(1, self.x.shape[1], 1, 1)
            self.std = self.std.mean(1, keepdim=True).expand(1, self.x.shape[1], 1, 1)
        self.scale = 1.0 / self.std
        self.shift = -self.mean / self.std

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        n = self.x.shape[0]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.distributed:
            ws, r = dist.world_size(), dist.rank()
            per = n // ws if self.drop_last else -(-n // ws)
            order = torch.cat([order, order[: per * ws - n]]) if per * ws > n else order[: per * ws]
            order = order[r::ws]
        return order.to(self.device)

    def __len__(self) -> int:
        n = self.x.shape[0]
        if self.distributed:
            ws = dist.world_size()
            n = n // ws if self.drop_last else -(-n // ws)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        nb = len(self)
        draws = None
        if self.augment or self.cutout:  # the epoch's random draws, one host-to-device copy
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7919)
            h, w = self.x.shape[-2:]
            draws = draw_augmentation(int(order.numel()), h, w, self.padding if self.augment else 0, self.cutout, g)
            draws = draws.pin_memory() if self.device.type == "cuda" else draws
            draws = draws.to(self.device, non_blocking=True)
        for i in range(nb):
            lo, hi = i * self.batch_size, (i + 1) * self.batch_size
            idx = order[lo:hi]
            x = self.x.index_select(0, idx)
            if self.augment:  # on uint8 pixels: zero padding as torchvision pads the PIL image
                d = draws[:, lo:hi]
                x = crop_flip(x, self.padding, d[0], d[1], d[2])
            x = torch.addcmul(self.shift, x.float(), self.scale)  # (x - mean) / std in one pass
            if self.cutout:
                d = draws[:, lo:hi]
                x = cutout_at(x, self.cutout, d[3], d[4])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.y.index_select(0, idx)


class _TorchLoader:
    """A torch DataLoader over a disk split, moving batches to `device` (ImageNet-sized data)."""

    def __init__(self, split: Split, batch_size: int, *, train: bool, device: Any, seed: int = 0,
                 num_workers: int | None = None, drop_last: bool | None = None, channels_last: bool = False,
                 distributed: bool | None = None, augment: bool | None = None, shuffle: bool | None = None
                 ) -> None:
        from torch.utils.data import DataLoader, DistributedSampler, Subset

        augment = train if augment is None else augment
        shuffle = train if shuffle is None else shuffle
        source = split.eval_source if not augment and split.eval_source is not None else split.source
        ds = source if split.indices is None else Subset(source, split.indices.tolist())
        self.device = torch.device(device)
        self.channels_last = channels_last
        shard = dist.world_size() > 1 if distributed is None else distributed
        self.sampler = DistributedSampler(ds, shuffle=shuffle, seed=seed) if shard else None
        g = torch.Generator().manual_seed(seed)
        num_workers = default_workers() if num_workers is None else int(num_workers)
        self.loader = DataLoader(ds, batch_size=batch_size, shuffle=shuffle and self.sampler is None,
                                 sampler=self.sampler, num_workers=num_workers, generator=g,
                                 drop_last=train if drop_last is None else drop_last,
                                 pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for x, y in self.loader:
                x = x.to(self.device, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, y.to(self.device, non_blocking=True)
        except NASError as e:  # raised in a worker (a corrupt image): the DataLoader adds the worker's traceback
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            last = lines[-1] if lines else type(e).__name__
            if len(lines) > 1 and "Error: " in last:
                last = last.split("Error: ", 1)[1]
            raise type(e)(last) from None


def make_loader(split: Split, batch_size: int, *, train: bool, device: torch.device | str = "cpu",
                augment: bool | None = None, cutout: int = 0, seed: int = 0, drop_last: bool | None = None,
                shuffle: bool | None = None, channels_last: bool = False, num_workers: int | None = None,
                distributed: bool | None = None) -> Any:
    """The right loader for `split`: DeviceLoader when it is in memory, a DataLoader otherwise.

    `augment` and `shuffle` default to `train`. A disk split augments through its dataset's transform;
    without augmentation it is read through its `eval_source` when it has one (a held-out part of an
    ImageFolder training set gets the evaluation transform). `cutout` applies to in-memory splits.

    `num_workers` (disk splits): DataLoader worker processes, default the cores available
    (`default_workers`). `distributed` (default: whether torch.distributed runs with several ranks)
    shards the items by rank; pass False to read the whole split on every rank (an evaluation that
    shards it itself).
    """
    if split.in_memory:
        return DeviceLoader(split, batch_size, train=train, device=device, augment=augment, cutout=cutout,
                            seed=seed, drop_last=drop_last, shuffle=shuffle, distributed=distributed,
                            channels_last=channels_last)
    return _TorchLoader(split, batch_size, train=train, device=device, seed=seed, num_workers=num_workers,
                        drop_last=drop_last, channels_last=channels_last, distributed=distributed,
                        augment=augment, shuffle=shuffle)
