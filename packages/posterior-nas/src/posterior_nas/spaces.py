"""The paper's supernets as nas_common spaces: `supnet-m`, `supnet-mi` (CIFAR) and `supnet-r` (ImageNet).

Importing this module registers them (entry point group `nas_common.spaces`), and the paper's training
schedules as `nas train` presets (`pgnas-cifar`, `pgnas-imagenet`). An architecture is a pruned network
of a supernet:

    spec = {"keep": {"s1.b0.p1.conv2": "1101...0", ...}}      # kept input channels per group
    net  = {"width": 96, "blocks": [4, 4, 4], "stem": 16, "num_classes": 10, "input": [3, 32, 32]}

`keep` maps a group (one conv, i.e. one (layer, kernel-size group)) to a bit string with one
character per input channel of that conv in the supernet ("1" kept, "0" dropped). Groups that keep
every channel are left out (the canonical form), so `{"keep": {}}` is the whole supernet. `build`
applies the vanishing rule (an op whose channels are all dropped is removed, with what only fed it)
and returns the physically pruned network: convolutions with fewer channels, removed paths.
"""
from __future__ import annotations

import random
from typing import Any

import torch
from torch import nn

from nas_common.errors import ArchFileError
from nas_common.registry import SPACES
from nas_common.spaces.base import Space
from nas_common.train.config import TRAIN_PRESETS as _TRAIN_PRESET_REGISTRY
from nas_common.train.config import register_train_preset

from .recipes import TRAIN_PRESETS
from .supernets import PLANS, R_BRANCHES, Plan

DEFAULT_NETS: dict[str, dict[str, Any]] = {
    "supnet-m": {"width": 96, "blocks": [4, 4, 4], "stem": 16, "stem_stride": 1, "num_classes": 10,
                 "input": [3, 32, 32]},
    "supnet-mi": {"width": 160, "blocks": [4, 4, 4], "stem": 16, "stem_stride": 1, "num_classes": 10,
                  "input": [3, 32, 32]},
    "supnet-r": {"width": 64, "blocks": [3, 4, 6, 3], "num_classes": 1000, "input": [3, 224, 224]},
}


def _even_sizes(n: int, k: int) -> list[int]:
    """The sizes of `torch.chunk`-like equal parts of n (n divisible by k where it matters: SupNet-R)."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _pos_int(v: Any, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ArchFileError(f"net.{name} must be a positive integer, got {v!r}")
    return v


class SupNetSpace(Space):
    """Channel-level pruned networks of one supernet (see the module docstring)."""

    def __init__(self, name: str, kind: str, default_net: dict[str, Any], n_stages: int) -> None:
        self.name = name
        self.kind = kind
        self.default_net = default_net
        self.n_stages = n_stages

    # ---- validation ---------------------------------------------------------------------------
    def validate_net(self, net: Any) -> dict[str, Any]:
        out = super().validate_net(net)
        allowed = set(self.default_net)
        unknown = set(out) - allowed
        if unknown:
            raise ArchFileError(f"net has unknown key(s) {', '.join(sorted(unknown))} for space {self.name}; "
                                f"valid: {', '.join(sorted(allowed))}")
        _pos_int(out["width"], "width")
        if self.kind == "R" and out["width"] % 4:
            raise ArchFileError(f"net.width must be a multiple of 4 for {self.name} (four branches), got "
                                f"{out['width']}")
        if "stem" in out:
            _pos_int(out["stem"], "stem")
        if "stem_stride" in out and out["stem_stride"] not in (1, 2):
            raise ArchFileError(f"net.stem_stride must be 1 (the paper) or 2, got {out['stem_stride']!r}")
        blocks = out["blocks"]
        if not isinstance(blocks, (list, tuple)) or len(blocks) != self.n_stages:
            raise ArchFileError(f"net.blocks must list the blocks of each of the {self.n_stages} stages, "
                                f"e.g. {self.default_net['blocks']}, got {blocks!r}")
        out["blocks"] = [_pos_int(b, "blocks[]") for b in blocks]
        return out

    def validate_spec(self, spec: Any) -> dict[str, Any]:
        if not isinstance(spec, dict) or set(spec) - {"keep"}:
            raise ArchFileError(f"spec must be {{'keep': {{GROUP: BITS}}}} for space {self.name}, got "
                                f"{str(spec)[:80]!r}")
        keep = spec.get("keep", {})
        if not isinstance(keep, dict):
            raise ArchFileError(f"spec.keep must map group names to bit strings, got {type(keep).__name__}")
        out = {}
        for g, bits in keep.items():
            if not isinstance(bits, str) or not bits or set(bits) - {"0", "1"}:
                raise ArchFileError(f"spec.keep[{g!r}] must be a string of 0/1 (one per input channel), "
                                    f"got {str(bits)[:40]!r}")
            if "0" in bits:  # all-ones groups are the default: leave them out (canonical form)
                out[g] = bits
        return {"keep": dict(sorted(out.items()))}

    # ---- masks <-> spec -----------------------------------------------------------------------
    def plan(self, net: dict[str, Any]) -> Plan:
        return PLANS[self.kind](self.validate_net(net))

    def mask_of(self, spec: dict[str, Any], net: dict[str, Any]) -> torch.Tensor:
        """The flat (K,) bool mask of a spec (groups not listed keep every channel)."""
        plan = self.plan(net)
        keep = self.validate_spec(spec)["keep"]
        unknown = set(keep) - set(plan.names)
        if unknown:
            bad = sorted(unknown)[0]
            raise ArchFileError(f"spec.keep[{bad!r}] is not a group of {self.name} with this net "
                                f"(groups look like {plan.names[0]!r}, ...; {len(plan.names)} in all)")
        parts = []
        for g, c in plan.groups:
            bits = keep.get(g)
            if bits is None:
                parts.append(torch.ones(c, dtype=torch.bool))
                continue
            if len(bits) != c:
                raise ArchFileError(f"spec.keep[{g!r}] has {len(bits)} bits but that conv has {c} input channels")
            parts.append(torch.tensor([ch == "1" for ch in bits], dtype=torch.bool))
        return torch.cat(parts)

    def spec_of(self, mask: torch.Tensor, net: dict[str, Any]) -> dict[str, Any]:
        """The canonical spec of one flat mask (K,), after the vanishing rule."""
        plan = self.plan(net)
        eff = plan.split(plan.effective(mask.reshape(1, -1).cpu()))
        keep = {}
        for g in plan.names:
            row = eff[g][0]
            if not bool(row.all()):
                keep[g] = "".join("1" if b else "0" for b in row.tolist())
        return {"keep": keep}

    # ---- Space API ----------------------------------------------------------------------------
    def build(self, spec: dict[str, Any], net: dict[str, Any]) -> nn.Module:
        plan = self.plan(net)
        return plan.build(plan.keep_of(self.mask_of(spec, net)))

    def supernet(self, net: dict[str, Any], p_init: float = 0.1, temperature: float = 0.2) -> nn.Module:
        """The gated supernet (all channels, one learned drop rate per group)."""
        return self.plan(net).build(None, p_init=p_init, temperature=temperature)

    def random_spec(self, rng: random.Random, net: dict[str, Any]) -> dict[str, Any]:
        """Every channel kept with one probability drawn uniformly from [0.5, 1) for the whole network."""
        plan = self.plan(net)
        rate = rng.uniform(0.5, 1.0)
        g = torch.Generator().manual_seed(rng.getrandbits(62))
        return self.spec_of(torch.rand(plan.num_channels, generator=g) < rate, net)

    # ---- what the harness's equal-cost baselines need -------------------------------------------
    def costs(self, spec: dict[str, Any], net: dict[str, Any]) -> dict[str, float]:
        """MACs and params in closed form (the plan's per-conv count, vanishing rule applied): equal to
        the counted costs of `build(spec, net)`."""
        plan = self.plan(net)
        macs, params = plan.costs(self.mask_of(spec, net).reshape(1, -1))
        return {"macs": float(macs[0]), "params": float(params[0])}

    def scaled(self, spec: dict[str, Any], net: dict[str, Any], k: float, extra: dict[str, Any] | None = None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(spec, net) about `k` times as wide: the supernet's width (and stem) times k (SupNet-R: a
        multiple of 4, one quarter per branch), then the net keys `extra` set (a size variant, e.g. another
        stem), and in every group the same fraction of its input channels kept as in `spec`, spread
        evenly over the new group (which channels does not matter to a network trained from scratch,
        only how many)."""
        net = self.validate_net(net)
        width = max(1, round(net["width"] * k))
        if self.kind == "R":
            width = max(4, 4 * round(width / 4))
        new_net = {**net, "width": width}
        if "stem" in net:
            new_net["stem"] = max(1, round(net["stem"] * k))
        new_net = self.validate_net({**new_net, **(extra or {})})
        keep = self.validate_spec(spec)["keep"]
        if not keep:
            return {"keep": {}}, new_net
        old_plan, new_plan = self.plan(net), self.plan(new_net)
        mask = old_plan.split(self.mask_of(spec, net).reshape(1, -1))
        parts = []
        for g, c in new_plan.groups:
            # SupNet-R's conv3 reads the four branches' outputs, a quarter each: keep each quarter's fraction
            segments = len(R_BRANCHES) if self.kind == "R" and g.endswith(".conv3") else 1
            for old_seg, size in zip(mask[g][0].chunk(segments), _even_sizes(c, segments), strict=True):
                f = float(old_seg.float().mean())
                idx = torch.arange(size, dtype=torch.float64)
                parts.append(torch.floor((idx + 1) * f) > torch.floor(idx * f))  # round(size f), evenly spread
        return self.spec_of(torch.cat(parts), new_net), new_net

    def reference(self, net: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The full supernet (every channel kept) at `net`'s size: for SupNet-M the shake-shake 26 2x96d
        layout without the shake, for SupNet-R ResNet-50 with the four branches."""
        return f"full {self.name}", {"keep": {}}, self.validate_net(net)

    def size_variants(self, net: dict[str, Any]) -> list[dict[str, Any]]:
        """Other stem widths (SupNet-M/MI), finer steps than the stage widths give; none for SupNet-R."""
        net = self.validate_net(net)
        if "stem" not in net:
            return []
        return [{"stem": net["stem"] + d} for d in (1, -1, 2, -2, 3, -3, 4, -4) if net["stem"] + d >= 1]

    def describe(self, spec: dict[str, Any]) -> str:
        keep = self.validate_spec(spec)["keep"]
        kept = sum(b.count("1") for b in keep.values())
        total = sum(len(b) for b in keep.values())
        vanished = sum(1 for b in keep.values() if "1" not in b)
        return (f"{self.name}: {len(keep)} pruned groups ({vanished} vanished convs), {kept}/{total} of their "
                f"input channels kept")


SPACES_BY_NAME = {
    "supnet-m": SupNetSpace("supnet-m", "M", DEFAULT_NETS["supnet-m"], 3),
    "supnet-mi": SupNetSpace("supnet-mi", "M", DEFAULT_NETS["supnet-mi"], 3),
    "supnet-r": SupNetSpace("supnet-r", "R", DEFAULT_NETS["supnet-r"], 4),
}

for _name, _space in SPACES_BY_NAME.items():
    if not SPACES.registered(_name):  # importing twice (entry point + direct import) must not raise
        SPACES.register(_name, _space)


# the paper's schedules as `nas train` presets (recipes.py)
for _name, _values in TRAIN_PRESETS.items():
    if _name not in _TRAIN_PRESET_REGISTRY._items:  # importing twice must not raise
        register_train_preset(_name, _values)


def get_supnet_space(name: str) -> SupNetSpace:
    """One of this package's spaces by name (raises the registry's did-you-mean error otherwise)."""
    space = SPACES.get(name)
    if not isinstance(space, SupNetSpace):
        raise ArchFileError(f"space {name!r} is not a posterior-nas supernet: use one of "
                            f"{', '.join(SPACES_BY_NAME)}")
    return space
