"""The fixed-shape search network against an independent, literal implementation of TAS's equations
(`tas_reference`) on micro networks, with fixed logits and fixed Gumbel noise."""
from __future__ import annotations

import pytest
import torch
from tas_reference import paper_depth_weights, paper_sample, reference_forward

from tas_nas.model import SearchResNet

MICRO = {
    # stride-1 blocks whose widths differ (residual into the first channels), a projection at stride 2,
    # depth choices 1, 2, 3 in each stage
    "basic": {"kind": "cifar", "block": "basic", "stem": 8, "depths": [3, 3],
              "widths": [[[8, 8]] * 3, [[16, 16]] * 3]},
    "bottleneck": {"kind": "cifar", "block": "bottleneck", "stem": 8, "depths": [2, 3],
                   "widths": [[[4, 4, 16]] * 2, [[8, 8, 32]] * 3]},
    "imagenet": {"kind": "imagenet", "block": "basic", "stem": 8, "depths": [2, 2],
                 "widths": [[[8, 8]] * 2, [[16, 16]] * 2]},
}


def _model(name: str, k: int, seed: int = 0, mix: str = "auto") -> SearchResNet:
    torch.manual_seed(seed)
    model = SearchResNet(MICRO[name], 5, (3, 16, 16), k=k, init_std=1.0, mix=mix)
    with torch.no_grad():  # non-trivial BN parameters and running statistics for every candidate
        for mod in model.modules():
            if hasattr(mod, "running_var"):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.3)
                mod.running_mean.normal_(0, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return model.double()  # float64: the micro nets' 1-channel BNs make float32 gradients ill-conditioned


def _noise(model: SearchResNet, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def gumbel(shape: torch.Size) -> torch.Tensor:
        return -torch.log(-torch.log(torch.rand(shape, generator=g, dtype=torch.float64).clamp(1e-10, 1 - 1e-7)))

    return gumbel(model.width_logits.shape), gumbel(model.width_logits.shape), gumbel(model.depth_logits.shape)


@pytest.mark.parametrize("name,mix", [(name, "dense") for name in MICRO] + [("basic", "gather")])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("train", [True, False])
def test_search_forward_equals_the_literal_equations(name: str, mix: str, k: int, train: bool) -> None:
    model = _model(name, k, mix=mix).train(train)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tau = 0.7
    for seed in range(3):
        g1, g2, gd = _noise(model, seed)
        picks, weights = paper_sample(model.width_logits, model.width_mask, tau, k, g1, g2)
        dws = paper_depth_weights(model.depth_logits, model.depth_mask, tau, gd)
        idx, p, dw = model.sample(tau, noise=(g1, g2, gd))
        assert idx.tolist() == picks
        torch.testing.assert_close(p, weights)
        for s, w in enumerate(dws):
            torch.testing.assert_close(dw[s, : len(w)], w)
            assert (dw[s, len(w):] == 0).all()
        state = {k_: v.clone() for k_, v in model.state_dict().items()}
        ref = reference_forward(model, x, picks, weights, dws)
        model.load_state_dict(state)  # the reference's BN calls left the running statistics alone; be sure
        out = model(x, (idx, p, dw))
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
        # the gradients that reach the architecture logits through the mixing weights agree too
        g_fast = torch.autograd.grad(out.logsumexp(1).sum(), model.arch_parameters(), allow_unused=True)
        picks2, weights2 = paper_sample(model.width_logits, model.width_mask, tau, k, g1, g2)
        dws2 = paper_depth_weights(model.depth_logits, model.depth_mask, tau, gd)
        ref2 = reference_forward(model, x, picks2, weights2, dws2)
        g_ref = torch.autograd.grad(ref2.logsumexp(1).sum(), model.arch_parameters(), allow_unused=True)
        for a, b in zip(g_fast, g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_active_widths_are_narrower_than_the_layers() -> None:
    """The case the test above must cover: sampled widths below full width in every layer, so that
    padding, residual-into-first-channels and the aggregation width all matter."""
    model = _model("basic", 2)
    g1, g2, gd = _noise(model, 0)
    idx, _, _ = model.sample(0.7, noise=(g1, g2, gd))
    widths = model.width_int.gather(1, idx).max(1).values
    assert (widths < torch.tensor([c[-1] for c in model.choices])).float().mean() > 0.5
