"""What a search space is: a validator and a builder for its own `spec` (genotype, widths, edges)."""
from __future__ import annotations

import random
from typing import Any

from torch import nn

from ..errors import ArchFileError


class Space:
    """A search space turns a spec (its own JSON-able description) plus net settings into an nn.Module.

    Subclasses set `name` and `default_net`, and implement `validate_spec`, `build` and `random_spec`.
    `net` always holds `num_classes` and `input` ([C, H, W]); spaces add their own keys (C, layers, ...).
    """

    name: str = ""
    default_net: dict[str, Any] = {}

    def validate_spec(self, spec: Any) -> dict[str, Any]:
        """The normalised spec, or ArchFileError naming the bad field (e.g. 'spec.normal[3][0]')."""
        raise NotImplementedError

    def validate_net(self, net: Any) -> dict[str, Any]:
        if not isinstance(net, dict):
            raise ArchFileError(f"net must be an object like {{'num_classes': 10, 'input': [3, 32, 32]}}, got {net!r}")
        out = {**self.default_net, **net}
        nc = out.get("num_classes")
        if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
            raise ArchFileError(f"net.num_classes must be a positive integer, got {nc!r}")
        shape = out.get("input", [3, 32, 32])
        if (
            not isinstance(shape, (list, tuple))
            or len(shape) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        ):
            raise ArchFileError(f"net.input must be [channels, height, width] of positive integers, got {shape!r}")
        out["input"] = list(shape)
        return out

    def build(self, spec: dict[str, Any], net: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def random_spec(self, rng: random.Random, net: dict[str, Any]) -> dict[str, Any]:
        """A uniformly random valid spec (the harness's random baselines)."""
        raise NotImplementedError

    # -- what a fair comparison needs (the harness's equal-cost baselines) -------------------------
    def scaled(self, spec: dict[str, Any], net: dict[str, Any], k: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """(spec, net) with every width multiplied by about `k` (rounded to the space's integers)."""
        raise NotImplementedError(f"the {self.name} space does not say how to scale its networks")

    def reference(self, net: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """(name, spec, net) of the space's reference network at `net`'s size (ResNet-56, DARTS-V2, a
        full supernet), which `scaled` then widens or narrows to a target cost."""
        raise NotImplementedError(f"the {self.name} space names no reference network")

    def size_variants(self, net: dict[str, Any]) -> list[dict[str, Any]]:
        """Further net settings to try, in order, where integer widths step over a cost tolerance
        (DARTS: other cell counts)."""
        return []

    def costs(self, spec: dict[str, Any], net: dict[str, Any]) -> dict[str, float] | None:
        """Closed-form {"macs", "params"} of a spec, where the space has one (else None: count them on
        the built network). `SpaceTests` checks it against the counted costs."""
        return None

    def describe(self, spec: dict[str, Any]) -> str:
        """A short human-readable summary of a spec."""
        return str(spec)
