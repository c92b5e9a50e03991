"""How well inherited weights rank architectures: Kendall's tau between the accuracy of sampled masks
with the supernet's weights (no fine-tuning) and their accuracy trained stand-alone from scratch.

This is an analysis tool (and a benchmark), not part of the search loop: stand-alone training of
every sampled network is exactly the cost the one-shot method avoids.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from scipy.stats import kendalltau

from nas_common.data import Split, make_loader
from nas_common.oneshot import Accumulator

from .sampling import score_masks
from .spaces import SupNetSpace
from .supernets import SupNet


def standalone_accuracy(space: SupNetSpace, spec: dict[str, Any], net: dict[str, Any], train: Split,
                        held: Sequence[tuple[torch.Tensor, torch.Tensor]], *, epochs: int = 5,
                        batch_size: int = 64, lr: float = 0.05, device: torch.device | str = "cpu",
                        seed: int = 0) -> float:
    """Accuracy on `held` of the pruned network of `spec` trained from scratch (SGD, cosine, wd 5e-4).

    The global RNG is left untouched (the initialisation draws inside `fork_rng`).
    """
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        model = space.build(spec, net).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
        loader = make_loader(train, batch_size, train=True, device=dev, seed=seed)
        steps = max(1, epochs * len(loader))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            model.train()
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    acc = Accumulator(dev)
    with torch.no_grad():
        for x, y in held:
            acc.add_batch(model(x), y)
    return acc.compute()["top1"]


def kendall_tau(supernet: SupNet, space: SupNetSpace, net: dict[str, Any], masks: torch.Tensor, train: Split,
                held: Sequence[tuple[torch.Tensor, torch.Tensor]], *, epochs: int = 5, batch_size: int = 64,
                lr: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Kendall's tau (scipy) between inherited-weight and stand-alone accuracy of `masks` (n, K)."""
    dev = masks.device
    inherited, _ = score_masks(supernet, masks, held)
    standalone = [standalone_accuracy(space, space.spec_of(m, net), net, train, held, epochs=epochs,
                                      batch_size=batch_size, lr=lr, device=dev, seed=seed + i)
                  for i, m in enumerate(masks)]
    res = kendalltau(inherited.cpu().numpy(), standalone)
    return {"tau": float(res.statistic), "p_value": float(res.pvalue), "inherited": inherited.cpu().tolist(),
            "standalone": standalone}
