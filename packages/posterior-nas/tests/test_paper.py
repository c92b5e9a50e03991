"""The paper's supernets, recipes and regulariser, checked against the paper and independent computations."""
from __future__ import annotations

import pytest
import torch

from posterior_nas import get_supnet_space


def _param_count(name: str) -> int:
    """Parameters of the full network of a space at its default size (built on the meta device: no memory)."""
    space = get_supnet_space(name)
    with torch.device("meta"):
        sup = space.supernet(space.default_net)
    return sum(p.numel() for p in sup.parameters()) - len(sup.gates)  # the drop-rate logits are not weights


@pytest.mark.parametrize("name, millions", [("supnet-m", 26.2), ("supnet-mi", 72.7)])
def test_supnet_m_and_mi_sizes_match_the_papers_table(name: str, millions: float) -> None:
    """Table 3 of the paper lists the full models: SupNet-M 26.2M params, SupNet-MI 72.7M."""
    n = _param_count(name)
    assert round(n / 1e6, 1) == millions, n
    space = get_supnet_space(name)
    plan = space.plan(space.default_net)
    _, params = plan.costs(torch.ones(1, plan.num_channels, dtype=torch.bool))
    assert int(params[0]) == n  # the closed form agrees with the built network


def test_supnet_r_is_resnet50_with_the_texts_four_branches() -> None:
    """SupNet-R as the supplementary describes it: ResNet-50 with each 3x3 conv (C -> C, 9 C^2 weights) replaced
    by 1x1, 3x3, 3x3-dilated and 5x5-dilated branches of C/4 outputs each (C * C/4 * (1 + 9 + 9 + 25) = 11 C^2),
    every other layer as in ResNet-50: torchvision's 25,557,032 params (the paper's "Res50 25.6M"). The count
    is the plan's closed form, which equals the counted one (test_closed_form_costs_match_counted). (The
    paper's Table 9 lists the inflated ResNet-50 at 44.0M, which no reading of the text gives: see the README.)"""
    resnet50 = 25_557_032
    widths, blocks = (64, 128, 256, 512), (3, 4, 6, 3)
    extra = sum(n * 2 * c * c for c, n in zip(widths, blocks, strict=True))
    space = get_supnet_space("supnet-r")
    plan = space.plan(space.default_net)
    _, params = plan.costs(torch.ones(1, plan.num_channels, dtype=torch.bool))
    assert int(params[0]) == resnet50 + extra
    assert round(int(params[0]) / 1e6, 1) == 28.1


# ---- the hybrid representation under reduced precision ---------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_concrete_noise_is_drawn_in_float32_under_low_precision(dtype: torch.dtype) -> None:
    """Uniform draws in bf16/fp16 are so coarse near 0 and 1 that the logistic noise log(-log u1) - log(-log u2)
    is cut off at about +-8 to +-10 (and u rounding to 1 gives -inf, NaN when both do): a group with a small
    drop rate is then never dropped. The noise must be drawn in float32 whatever the activations' dtype; the
    mask comes back in that dtype."""
    from posterior_nas import GatedConv

    torch.manual_seed(0)
    like = torch.zeros(1, dtype=dtype)
    rare = GatedConv(4, 4, 1, gated=True, p_init=2e-5, temperature=0.2)
    m = rare.concrete_mask(2000, 1000, like)  # 2e6 draws: 40 drops expected (std 6.3)
    assert m.dtype == dtype
    assert bool(torch.isfinite(m).all())
    assert 15 <= int((m.float() < 0.5).sum()) <= 70
    common = GatedConv(4, 4, 1, gated=True, p_init=0.3, temperature=0.2)
    m = common.concrete_mask(1000, 100, like)
    assert float((m.float() < 0.5).float().mean()) == pytest.approx(0.3, abs=0.01)


# ---- the regulariser, against independent computations --------------------------------------------------

def _expected_regulariser(gates: list, l2: float, N: float, form: str) -> float:
    """The KL term computed from what it means, not from the package's formula:

    * weights: the Gaussian prior N(0, I/l2) on the *sampled* weights phi = m * eps (eps_k ~ Bernoulli(1 - p)
      per input channel), i.e. l2 / (2N) * E||phi||^2, the expectation taken exactly by enumerating every
      keep-mask of the group's input channels with its probability;
    * drop rates: minus the entropy of the group's Bernoulli variables, K channels each, from scipy (`entr`
      is -x log x): the `paper` form keeps only the -p log p part, `concrete` the full binary entropy.
    """
    from itertools import product

    from scipy.special import entr

    total = 0.0
    for g in gates:
        p = float(torch.sigmoid(g.p_logit.detach().double()))
        w = g.conv.weight.detach().double()
        k = w.shape[1]
        e_phi2 = 0.0
        for keep in product((0, 1), repeat=k):
            prob = 1.0
            for kept in keep:
                prob *= (1 - p) if kept else p
            e_phi2 += prob * sum(float(w[:, c].pow(2).sum()) for c in range(k) if keep[c])
        entropy = entr(p) + (entr(1 - p) if form == "concrete" else 0.0)
        total += l2 / (2 * N) * e_phi2 - k / N * entropy
    return total


@pytest.mark.parametrize("form", ["paper", "concrete"])
def test_regulariser_matches_an_independent_computation(form: str) -> None:
    from posterior_nas import GatedConv, regulariser

    torch.manual_seed(0)
    gates = [GatedConv(3, 2, 1, gated=True, p_init=0.2), GatedConv(5, 4, 3, gated=True, p_init=0.6),
             GatedConv(4, 3, 3, gated=True, p_init=0.03)]
    l2, N = 7.0, 50.0
    got = float(regulariser(gates, l2, N, form).detach())
    assert got == pytest.approx(_expected_regulariser(gates, l2, N, form), rel=1e-5)


@pytest.mark.parametrize("form, optimum", [("paper", 1 / 2.718281828459045), ("concrete", 0.5)])
def test_entropy_term_has_the_documented_sign(form: str, optimum: float) -> None:
    """The rate term is documented as minus an entropy: + (K/N) p log p (paper), + (K/N)[p log p + (1-p) log(1-p)]
    (concrete), convex with its minimum at p = 1/e and p = 1/2. So with no weights, the regulariser is negative
    and gradient descent on it brings p there from either side. (The sign Eq. 15 shows, -(K/N) p log p, is
    concave: descent would push p to 0 or 1.)"""
    from posterior_nas import GatedConv, regulariser

    doc = regulariser.__doc__ or ""
    assert "+  (K_g / N) * p_g * log p_g" in doc and "minimum at p = 1/e" in doc
    for start in (0.05, 0.9):
        g = GatedConv(4, 2, 1, gated=True, p_init=start)
        torch.nn.init.zeros_(g.conv.weight)
        assert float(regulariser([g], 1.0, 1.0, form).detach()) < 0
        opt = torch.optim.SGD([g.p_logit], lr=0.5)
        for _ in range(300):
            opt.zero_grad()
            regulariser([g], 1.0, 1.0, form).backward()
            opt.step()
        assert float(g.p.detach()) == pytest.approx(optimum, abs=1e-3)
