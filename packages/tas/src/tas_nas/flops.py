"""Expected MACs of the TAS super network, from the width and depth distributions, and the FLOP loss.

`FlopTable(model)` reads the geometry of every conv once from nas_common's cost table
(`nas_common.costs.tables.resnet_conv_shapes` of the unpruned spec) and stores it as index/coefficient
tensors; `table(width_probs, depth_probs)` is then a handful of gathers and one sum (no re-tracing, no
Python loop over layers, no host sync). It is exact for the networks the "resnet" space builds:

* conv l: k^2 * H * W * E[C_in] * E[C_out], times P(depth >= block) for blocks after a stage's first;
* a stage's first conv reads the previous stage's output, whose width depends on that stage's depth:
  E[C_in] = sum_d P(depth = d) * E[width of block d's last conv];
* projection shortcuts: always where the block has stride 2; at stride 1 exactly when the block's input
  width differs from its output width, which costs H*W*(E[X]E[W] - sum_c c^2 P(X=c) P(W=c));
* the classifier: E[C_last] * classes.

Widths and depths are independent under the product distribution, so with one-hot distributions the
value is the counted MACs of the derived network (tests check this against `count_macs`). TAS's own
estimate (and `nas_common.costs.tables.expected_macs`) ignores the last two dependencies.
"""
from __future__ import annotations

import torch
from torch import nn

from nas_common.spaces.resnet import resnet_conv_shapes

from .model import SearchResNet

__all__ = ["FlopTable", "flop_loss"]


class FlopTable(nn.Module):
    """Differentiable expected MACs of a `SearchResNet` (see the module docstring)."""

    def __init__(self, model: SearchResNet) -> None:
        super().__init__()
        shapes = resnet_conv_shapes(model.spec, model.input_shape, model.num_classes)
        n_w = model.width_logits.shape[0]
        n_s = len(model.var_of)
        max_b = max(len(v) for v in model.var_of)
        self.n_w, self.n_s, self.max_b = n_w, n_s, max_b
        c_in_idx, c_num_idx = n_w + n_s, n_w + n_s + 1  # constant slots of the extended width vector
        self.register_buffer("consts", torch.tensor([float(model.input_shape[0]), float(model.num_classes)]))

        def so(s: int) -> int:  # slot of stage s's output width
            return n_w + s

        def pres(s: int, b: int) -> int:  # slot of P(depth_s >= b + 1); slot 0 is "always"
            return 0 if b == 0 else 1 + s * max_b + b

        def block_input(s: int, b: int) -> int:
            if b > 0:
                return model.var_of[s][b - 1][-1]
            return 0 if s == 0 else so(s - 1)

        coef, src_in, src_out, src_p = [], [], [], []
        eq_coef, eq_x, eq_w, eq_p = [], [], [], []
        has_proj: set[tuple[int, int]] = set()
        for r in shapes:
            area = float(r.k * r.k * r.h_out * r.w_out // r.groups)
            if r.kind == "linear":
                coef.append(float(r.h_out * r.w_out))
                src_in.append(so(n_s - 1))
                src_out.append(c_num_idx)
                src_p.append(0)
                continue
            if r.name == "conv1":
                coef.append(area)
                src_in.append(c_in_idx)
                src_out.append(0)
                src_p.append(0)
                continue
            s, b = r.stage, r.block
            leaf = r.name.split(".")[-2:]
            if leaf[0] == "downsample":
                has_proj.add((s, b))
                if r.stride != 1 or block_input(s, b) >= n_w:  # always there in every derived net
                    coef.append(area)
                    src_in.append(block_input(s, b))
                    src_out.append(model.var_of[s][b][-1])
                    src_p.append(pres(s, b))
                else:  # stride 1: there exactly when the widths differ
                    eq_coef.append(area)
                    eq_x.append(block_input(s, b))
                    eq_w.append(model.var_of[s][b][-1])
                    eq_p.append(pres(s, b))
                continue
            i = int(leaf[1].removeprefix("conv")) - 1
            coef.append(area)
            src_in.append(block_input(s, b) if i == 0 else model.var_of[s][b][i - 1])
            src_out.append(model.var_of[s][b][i])
            src_p.append(pres(s, b))
        # stride-1 blocks without a projection in the unpruned net get one whenever pruning makes the
        # block's input and output widths differ
        last_hw = {(r.stage, r.block): r.h_out * r.w_out for r in shapes if r.kind == "conv" and r.stage >= 0}
        for s, vars_s in enumerate(model.var_of):
            for b in range(len(vars_s)):
                if (s, b) in has_proj or (s > 0 and b == 0):
                    continue
                eq_coef.append(float(last_hw[(s, b)]))
                eq_x.append(block_input(s, b))
                eq_w.append(vars_s[b][-1])
                eq_p.append(pres(s, b))
        self.register_buffer("coef", torch.tensor(coef, dtype=torch.float64))
        self.register_buffer("src_in", torch.tensor(src_in, dtype=torch.long))
        self.register_buffer("src_out", torch.tensor(src_out, dtype=torch.long))
        self.register_buffer("src_p", torch.tensor(src_p, dtype=torch.long))
        vals = model.width_values.double() * model.width_mask
        self.register_buffer("values", vals)
        ex, ew = torch.tensor(eq_x, dtype=torch.long), torch.tensor(eq_w, dtype=torch.long)
        if any(x >= n_w for x in eq_x):
            raise AssertionError("internal: a stride-1 projection reads a stage output")  # cannot happen
        same = (vals[ex][:, :, None] == vals[ew][:, None, :]) & (vals[ex][:, :, None] > 0)
        self.register_buffer("eq_q", same * vals[ex][:, :, None] ** 2)  # (T, K, K): c^2 * [X = W = c]
        self.register_buffer("eq_coef", torch.tensor(eq_coef, dtype=torch.float64))
        self.register_buffer("eq_x", ex)
        self.register_buffer("eq_w", ew)
        self.register_buffer("eq_p", torch.tensor(eq_p, dtype=torch.long))
        # stage outputs and block presence from the depth distribution
        dv = model.depth_values
        last = torch.tensor([[vars_s[min(d, len(vars_s)) - 1][-1] for d in row]
                             for vars_s, row in zip(model.var_of, dv.tolist(), strict=False)])
        self.register_buffer("stage_last", last)  # (S, Kd): width variable of the stage's last conv
        blocks = torch.arange(max_b)
        self.register_buffer("keeps", ((dv[:, :, None] > blocks) & model.depth_mask[:, :, None]).double())
        self.max_macs = float(self.forward(*(t.double() for t in _full(model))))

    def forward(self, width_probs: torch.Tensor, depth_probs: torch.Tensor) -> torch.Tensor:
        """E[MACs] under per-conv width distributions (convs, K) and per-stage depth distributions (S, Kd)."""
        wp = width_probs.to(self.values.dtype)
        dp = depth_probs.to(self.values.dtype)
        e_w = (wp * self.values).sum(-1)  # (n_w,) expected width per conv
        e_so = (dp * e_w[self.stage_last]).sum(-1)  # (S,) expected width of each stage's output
        e_ext = torch.cat([e_w, e_so, self.consts.to(e_w.dtype)])
        keep = torch.cat([e_w.new_ones(1), torch.einsum("sj,sjb->sb", dp, self.keeps).flatten()])
        main = (self.coef * e_ext[self.src_in] * e_ext[self.src_out] * keep[self.src_p]).sum()
        if self.eq_coef.numel() == 0:
            return main
        px, pw = wp[self.eq_x], wp[self.eq_w]
        diff = e_w[self.eq_x] * e_w[self.eq_w] - torch.einsum("tj,tjk,tk->t", px, self.eq_q, pw)
        return main + (self.eq_coef * diff * keep[self.eq_p]).sum()


def _full(model: SearchResNet) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot distributions at the largest width of every conv and the deepest depth of every stage."""
    kw = model.width_mask.sum(-1) - 1
    kd = model.depth_mask.sum(-1) - 1
    w = nn.functional.one_hot(kw, model.width_mask.shape[1])
    d = nn.functional.one_hot(kd, model.depth_mask.shape[1])
    return w, d


def flop_loss(expected: torch.Tensor, current: torch.Tensor, target: float, tolerance: float) -> torch.Tensor:
    """TAS's FLOP loss: -log E[F] when the argmax net is below target - tolerance, +log E[F] above the
    target, 0 in between (`current` = MACs of the argmax net; all in the same units; no host sync)."""
    log_e = torch.log(expected)
    zero = torch.zeros_like(log_e)
    return torch.where(current < target - tolerance, -log_e, torch.where(current > target, log_e, zero))
