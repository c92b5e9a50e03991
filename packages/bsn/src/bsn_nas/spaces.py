"""The spaces of BSN's derived networks: "bsn-resnet", "bsn-rescnf" and "bsn-cnf" (registered on import).

An arch.json of these spaces names the super network's shape in `net` and the kept modules in `spec`::

    {"space": "bsn-resnet", "net": {"depth": 20, "widths": [16, 32, 64], "num_classes": 10, "input": [3, 32, 32]},
     "spec": {"keep": ["s0b0_block", "s0b0_skip", "s0b1_skip", ...]}}
    {"space": "bsn-rescnf", "net": {"blocks": 3, "widths": [16, 32, 64], "shift": "slr", ...}, "spec": {...}}
    {"space": "bsn-cnf", "net": {"layers": 8, "channels": 45, ...}, "spec": {"keep": ["l0_s0to1z", ...]}}

Module names: B-ResNet `s{stage}b{block}_block` (conv branch) and `s{stage}b{block}_skip` (identity or
projection); ResCNF the same plus `s{stage}b{block}_sc{i}_block` / `_sc{i}_skip` (the shortcut block
and the shortcut projection from the i-th source node in the stage before); B-CNF
`l{layer}_s{from}to{to}` (3x3 conv edges; a trailing `z` marks the zip chains inside layer 0 and the
last layer). The spec is normalised to the modules on an input->output path,
in topological order, so equal networks have equal specs.

nas_common loads this module through the entry-point group `nas_common.spaces`; importing it registers
the three spaces, BSN's cost `bsn-paper` (the paper's FLOPs, from `bsn_nas.costs`) and the training
recipe `bsn` (`nas train ARCH --preset bsn`: the paper's 300 epochs of SGD for the derived networks).

The hooks of an equal-cost comparison (`scaled`, `reference`, `size_variants`, `costs`) keep the kept
modules and change the widths: a spec names modules, whose names do not depend on the widths, so any
spec stays valid at any width.
"""
from __future__ import annotations

import random
from typing import Any

from torch import nn

from nas_common.errors import ArchFileError
from nas_common.registry import SPACES
from nas_common.spaces.base import Space
from nas_common.train.config import TRAIN_PRESETS, register_train_preset

# importing bsn_nas.costs registers the cost "bsn-paper"; a module import (not a name), since nas_common may
# load this entry point while bsn_nas.costs itself is still importing nas_common
from . import costs as _costs
from .graph import SHIFT_LETTERS, BSNNetwork, SuperGraph, make_graph, resnet_depth_ok

__all__ = ["BSNSpace", "BSNResNetSpace", "BSNResCNFSpace", "BSNCNFSpace", "graph_of"]


def graph_of(space: str, net: dict[str, Any]) -> SuperGraph:
    """The super graph of a validated `net` (cached: graphs are immutable)."""
    key = (space, repr(sorted(net.items())))
    g = _GRAPHS.get(key)
    if g is None:
        g = _GRAPHS[key] = make_graph(space, net)
    return g


_GRAPHS: dict[tuple[str, str], SuperGraph] = {}


def _posint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _check_widths(w: Any) -> list[int]:
    if not isinstance(w, (list, tuple)) or len(w) < 1 or not all(_posint(x) for x in w):
        raise ArchFileError(f"net.widths must be a list of positive stage widths like [16, 32, 64], got {w!r}")
    return list(w)


class BSNSpace(Space):
    """Shared part: a spec is {"keep": [module names]} over the super graph that `net` describes."""

    def validate_spec(self, spec: Any, net: dict[str, Any] | None = None) -> dict[str, Any]:
        if not isinstance(spec, dict) or set(spec) != {"keep"}:
            raise ArchFileError(f"spec must be {{'keep': [module names]}} for space {self.name!r}, got {spec!r}")
        keep = spec["keep"]
        if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
            raise ArchFileError(f"spec.keep must be a list of module names, got {keep!r}")
        if len(set(keep)) != len(keep):
            raise ArchFileError("spec.keep lists a module twice")
        if net is not None:
            g = graph_of(self.name, net)
            names = set(g.gate_names)
            bad = [k for k in keep if k not in names]
            if bad:
                raise ArchFileError(f"spec.keep: unknown module(s) {bad[:3]} for this net; valid names look like "
                                    f"{sorted(names)[:4]}")
            if not g.connected(keep):
                raise ArchFileError("spec.keep: the kept modules do not connect the input to the output")
            return {"keep": g.prune(keep)}
        return {"keep": list(keep)}

    def build(self, spec: dict[str, Any], net: dict[str, Any]) -> nn.Module:
        net = self.validate_net(net)
        spec = self.validate_spec(spec, net)
        return BSNNetwork(graph_of(self.name, net), keep=spec["keep"])

    def random_spec(self, rng: random.Random, net: dict[str, Any]) -> dict[str, Any]:
        net = self.validate_net(net)
        g = graph_of(self.name, net)
        while True:  # rejection sampling of a connected pattern (p = 1/2 per gate)
            keep = [nm for nm in g.gate_names if rng.random() < 0.5]
            if g.connected(keep):
                return {"keep": g.prune(keep)}

    def describe(self, spec: dict[str, Any]) -> str:
        return f"{self.name}: {len(spec['keep'])} modules kept"

    # -- equal-cost baselines ------------------------------------------------------------------------
    #: the label of the reference network (`reference`)
    reference_name: str = ""

    def _widened(self, net: dict[str, Any], k: float) -> dict[str, Any]:
        """`net` with every width times about `k` (ResCNF / B-ResNet: the stage widths)."""
        return {**net, "widths": [max(1, round(c * k)) for c in net["widths"]]}

    def scaled(self, spec: dict[str, Any], net: dict[str, Any], k: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The same kept modules in the super network whose widths are about `k` times `net`'s."""
        new = self.validate_net(self._widened(self.validate_net(net), k))
        return self.validate_spec(spec, new), new

    def reference_keep(self, g: SuperGraph) -> list[str]:
        """The modules of the reference network: every module (the full super network)."""
        return list(g.gate_names)

    def reference(self, net: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
        net = self.validate_net(net)
        g = graph_of(self.name, net)
        return self.reference_name, {"keep": g.prune(self.reference_keep(g))}, net

    def size_variants(self, net: dict[str, Any]) -> list[dict[str, Any]]:
        """One stage width one channel wider or narrower (then scaled with the others): finer steps of
        MACs than integer widths alone, and every spec stays valid (module names do not change)."""
        widths = self.validate_net(net)["widths"]
        out = []
        for d in (1, -1, 2, -2):
            for s in range(len(widths)):
                if widths[s] + d >= 1:
                    out.append({"widths": [w + d if i == s else w for i, w in enumerate(widths)]})
        return out

    def costs(self, spec: dict[str, Any], net: dict[str, Any]) -> dict[str, float]:
        """MACs and params in closed form: the stem, the head and the kept modules' own closed forms."""
        net = self.validate_net(net)
        got = _costs.pattern_costs(graph_of(self.name, net), self.validate_spec(spec, net)["keep"])
        return {"macs": got["macs"], "params": got["params"]}


class BSNResNetSpace(BSNSpace):
    name = "bsn-resnet"
    reference_name = "B-ResNet (all modules)"  # ResNet-`depth` itself
    default_net = {"depth": 20, "widths": [16, 32, 64], "num_classes": 10, "input": [3, 32, 32]}

    def validate_net(self, net: Any) -> dict[str, Any]:
        out = super().validate_net(net)
        d = out.get("depth")
        if not _posint(d) or not resnet_depth_ok(d):
            raise ArchFileError(f"net.depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110), got {d!r}")
        out["widths"] = _check_widths(out.get("widths"))
        return out

    def describe(self, spec: dict[str, Any]) -> str:
        blocks = sum(k.endswith("_block") for k in spec["keep"])
        skips = sum(k.endswith("_skip") for k in spec["keep"])
        return f"B-ResNet: {blocks} conv blocks and {skips} skips kept"


class BSNResCNFSpace(BSNSpace):
    """The official code's residual fabric: B-ResNet plus cross-stage shortcut blocks and skips."""

    name = "bsn-rescnf"
    reference_name = "ResNet in ResCNF (no shortcuts)"  # the paper's comparison: B-ResNet against ResNet-20
    default_net = {"blocks": 3, "widths": [16, 32, 64], "shift": "slr", "num_classes": 10, "input": [3, 32, 32]}

    def validate_net(self, net: Any) -> dict[str, Any]:
        out = super().validate_net(net)
        if not _posint(out.get("blocks")):
            raise ArchFileError(f"net.blocks must be a positive number of blocks per stage (3 for ResNet-20's "
                                f"layout), got {out.get('blocks')!r}")
        out["widths"] = _check_widths(out.get("widths"))
        shift = out.get("shift")
        if not isinstance(shift, str) or set(shift) - set(SHIFT_LETTERS) or len(set(shift)) != len(shift):
            raise ArchFileError(f"net.shift must be made of the letters s, l, r (each at most once; the official "
                                f"default is 'slr', '' means no shortcuts), got {shift!r}")
        out["shift"] = "".join(c for c in SHIFT_LETTERS if c in shift)
        return out

    def reference_keep(self, g: SuperGraph) -> list[str]:
        """The classic ResNet inside the fabric: every module but the shortcut blocks and projections."""
        return [nm for nm in g.gate_names if "_sc" not in nm]

    def describe(self, spec: dict[str, Any]) -> str:
        keep = spec["keep"]
        blocks = sum(k.endswith("_block") and "_sc" not in k for k in keep)
        sc = sum(k.endswith("_block") and "_sc" in k for k in keep)
        skips = sum(k.endswith("_skip") for k in keep)
        return f"ResCNF: {blocks} conv blocks, {sc} shortcut blocks and {skips} skips kept"


class BSNCNFSpace(BSNSpace):
    name = "bsn-cnf"
    reference_name = "B-CNF (all modules)"  # the full fabric: the paper's CNF row

    def _widened(self, net: dict[str, Any], k: float) -> dict[str, Any]:
        return {**net, "channels": max(1, round(net["channels"] * k))}

    def size_variants(self, net: dict[str, Any]) -> list[dict[str, Any]]:
        """None: a fabric has one width, which `scaled` sets, and other layer counts rename its modules."""
        return []
    default_net = {"layers": 8, "channels": 45, "num_classes": 10, "input": [3, 32, 32]}

    def validate_net(self, net: Any) -> dict[str, Any]:
        out = super().validate_net(net)
        if not _posint(out.get("layers")) or out["layers"] < 2:
            raise ArchFileError(f"net.layers must be an integer >= 2, got {out.get('layers')!r}")
        if not _posint(out.get("channels")):
            raise ArchFileError(f"net.channels must be a positive integer, got {out.get('channels')!r}")
        return out

    def describe(self, spec: dict[str, Any]) -> str:
        return f"B-CNF: {len(spec['keep'])} conv edges kept"


for _space in (BSNResNetSpace(), BSNResCNFSpace(), BSNCNFSpace()):
    if not SPACES.registered(_space.name):
        SPACES.register(_space.name, _space)

#: the paper's training recipe (the official code's, for the weights): what `nas train ARCH --preset bsn`
#: runs on a derived network: SGD 0.1, x0.1 from epoch 151 and 226 (0-based; `epoch > 150` as the
#: official adjust_lr), momentum 0.9 without Nesterov, wd 1e-4, 300 epochs, batch 64, crop + flip
TRAIN_RECIPE = {"epochs": 300, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "nesterov": False,
                "weight_decay": 1e-4, "schedule": "step", "milestones": (151, 226), "gamma": 0.1, "augment": True}
if not TRAIN_PRESETS.registered("bsn"):
    register_train_preset("bsn", TRAIN_RECIPE)
