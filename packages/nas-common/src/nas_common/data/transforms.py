"""Batched augmentation on the device: no per-image Python loop.

The random draws come from a CPU generator (reproducible on any device). `draw_augmentation` draws
them for many images at once, so a loader copies one epoch's draws to the device in one transfer
instead of blocking on a host-to-device copy per batch; `crop_flip` and `cutout_at` apply them.
"""
from __future__ import annotations

import torch


def draw_augmentation(n: int, h: int, w: int, padding: int, cutout: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(5, n) int64 draws on the CPU: crop offsets y, x (0..2*padding), flip (0/1), cutout centres y, x."""
    return torch.stack([
        torch.randint(0, 2 * padding + 1, (n,), generator=generator),
        torch.randint(0, 2 * padding + 1, (n,), generator=generator),
        (torch.rand(n, generator=generator) < 0.5).long(),
        torch.randint(0, max(h, 1), (n,), generator=generator) if cutout else torch.zeros(n, dtype=torch.long),
        torch.randint(0, max(w, 1), (n,), generator=generator) if cutout else torch.zeros(n, dtype=torch.long),
    ])


def crop_flip(x: torch.Tensor, padding: int, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor | None
              ) -> torch.Tensor:
    """Crop (B, C, H, W) at offsets (oy, ox) after zero padding, then flip the rows where `flip` is set."""
    b, c, h, w = x.shape
    if padding > 0:
        x = _crop(torch.nn.functional.pad(x, (padding, padding, padding, padding)), oy, ox, h, w)
    if flip is not None:
        x = torch.where(flip.bool()[:, None, None, None], x.flip(3), x)
    return x


def random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator | None = None,
                     flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, for a batch (B, C, H, W)."""
    b, _, h, w = x.shape
    d = draw_augmentation(b, h, w, padding, 0, generator).to(x.device)
    return crop_flip(x, padding, d[0], d[1], d[2] if flip else None)


def _crop(xp: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, c, hp, wp = xp.shape
    dev = xp.device
    rows = oy[:, None] + torch.arange(h, device=dev)  # (B, h)
    cols = ox[:, None] + torch.arange(w, device=dev)  # (B, w)
    x = xp.gather(2, rows[:, None, :, None].expand(b, c, h, wp))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def cutout(x: torch.Tensor, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one random `length` x `length` square per image (DeVries & Taylor), centres anywhere."""
    if length <= 0:
        return x
    b, _, h, w = x.shape
    d = draw_augmentation(b, h, w, 0, length, generator).to(x.device)
    return cutout_at(x, length, d[3], d[4])


def cutout_at(x: torch.Tensor, length: int, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Zero the `length` x `length` square centred at (cy, cx) of each image."""
    _, _, h, w = x.shape
    dev = x.device
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    my = ((ys >= (cy[:, None] - length // 2)) & (ys < (cy[:, None] + length - length // 2)))
    mx = ((xs >= (cx[:, None] - length // 2)) & (xs < (cx[:, None] + length - length // 2)))
    keep = ~(my[:, :, None] & mx[:, None, :])
    return x * keep[:, None, :, :].to(x.dtype)
