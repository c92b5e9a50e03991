"""Batched augmentation on the device: no per-image Python loop."""
from __future__ import annotations

import torch


def random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator | None = None,
                     flip: bool = True) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, for a batch (B, C, H, W)."""
    b, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device="cpu").to(dev)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device="cpu").to(dev)
        x = _crop(xp, oy, ox, h, w)
    if flip:
        mask = torch.rand(b, generator=generator, device="cpu").to(dev) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


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
    dev = x.device
    cy = torch.randint(0, h, (b,), generator=generator, device="cpu").to(dev)
    cx = torch.randint(0, w, (b,), generator=generator, device="cpu").to(dev)
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    my = ((ys >= (cy[:, None] - length // 2)) & (ys < (cy[:, None] + length - length // 2)))
    mx = ((xs >= (cx[:, None] - length // 2)) & (xs < (cx[:, None] + length - length // 2)))
    keep = ~(my[:, :, None] & mx[:, None, :])
    return x * keep[:, None, :, :].to(x.dtype)
