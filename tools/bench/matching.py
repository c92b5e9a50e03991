"""Architectures at a given cost: random architectures of a space within a MAC tolerance of a target,
and the space's reference network scaled to the target's MACs.

A baseline at a different cost proves nothing, so every baseline the harness trains is matched to the
found network's MACs (counted at the shared recipe's size):

* `random_arch_like(target, seed)` draws from the space's own uniform sampler (`Space.random_spec`)
  and keeps the first draw within the tolerance (rejection sampling: a uniform draw *given* the cost).
  When no draw lands within `tries` (the target lies in a tail the sampler rarely reaches, e.g. a NAT
  cell full of skips), the closest draw is widened or narrowed uniformly until it does; the result
  says which of the two happened (`matched_by`).
* `reference_like(target)` scales the space's reference network (ResNet-56's widths, DARTS-V2's C,
  the full B-ResNet / supernet) to the same MACs.

How a network of a space is made wider or narrower, and which network is its reference, is one entry
per space in `SCALINGS`. A space object may instead define `scaled(spec, net, k) -> (spec, net)` and
`reference(net) -> (name, spec, net)` itself; those win.
"""
from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nas_common.arch import Arch

MAC_TOLERANCE = 0.05  # |MACs / target - 1| of every random and reference baseline

SpecNet = tuple[dict[str, Any], dict[str, Any]]


@dataclass(frozen=True)
class Scaling:
    """How the harness scales the networks of one space by a width multiplier `k`.

    `scale(spec, net, k, extra)` returns the (spec, net) with every width multiplied by about k and the
    net keys `extra` set; `reference(net, name)` the space's reference network at `net`'s size, as
    (name, spec, net); `variants(net)` further `extra`s to try, in order, when integer widths step over
    the tolerance (DARTS: other cell counts; supernets: other stem widths).
    """

    scale: Callable[[dict[str, Any], dict[str, Any], float, dict[str, Any]], SpecNet]
    reference: Callable[[dict[str, Any], str | None], tuple[str, dict[str, Any], dict[str, Any]]]
    variants: Callable[[dict[str, Any]], list[dict[str, Any]]] = field(default=lambda net: [])


SCALINGS: dict[str, Scaling] = {}


def register_scaling(space: str, scaling: Scaling) -> Scaling:
    SCALINGS[space] = scaling
    return scaling


def _w(c: int, k: float) -> int:
    return max(1, int(round(c * k)))


# ---- resnet: every conv width and the stem -----------------------------------------------------------
def _resnet_scale(spec: dict[str, Any], net: dict[str, Any], k: float, extra: dict[str, Any]) -> SpecNet:
    s = copy.deepcopy(spec)
    s["stem"] = _w(spec["stem"], k)
    s["widths"] = [[[_w(c, k) for c in blk] for blk in stage] for stage in spec["widths"]]
    return s, {**net, **extra}


def _resnet_reference(net: dict[str, Any], name: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    from nas_common.arch import get_arch

    name = name or ("resnet56" if max(net["input"][1:]) <= 64 else "resnet18")
    return name, get_arch(name).spec, net


register_scaling("resnet", Scaling(_resnet_scale, _resnet_reference))


# ---- DARTS cells: C, then the number of cells ----------------------------------------------------------
def _darts_scale(spec: dict[str, Any], net: dict[str, Any], k: float, extra: dict[str, Any]) -> SpecNet:
    return spec, {**net, "C": _w(net["C"], k), **extra}


def _darts_reference(net: dict[str, Any], name: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    from nas_common.arch import get_arch

    name = name or "darts-v2"
    return name, get_arch(name).spec, net


def _darts_variants(net: dict[str, Any]) -> list[dict[str, Any]]:
    layers = net["layers"]
    return [{"layers": layers + d} for d in (1, -1, 2, -2, 3, -3) if layers + d >= 3]


for _space in ("darts", "darts-bn"):
    register_scaling(_space, Scaling(_darts_scale, _darts_reference, _darts_variants))


# ---- BSN's B-ResNet / B-CNF: the super graph's widths; the reference keeps every module ----------------
def _bsn_scale(spec: dict[str, Any], net: dict[str, Any], k: float, extra: dict[str, Any]) -> SpecNet:
    if "widths" in net:
        return spec, {**net, "widths": [_w(c, k) for c in net["widths"]], **extra}
    return spec, {**net, "channels": _w(net["channels"], k), **extra}


def _bsn_reference(space_name: str) -> Callable[[dict[str, Any], str | None], tuple[str, dict, dict]]:
    def ref(net: dict[str, Any], name: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
        from bsn_nas.spaces import graph_of  # only reached when bsn (which registers the space) is installed

        space = _space_of(space_name)
        net = space.validate_net(net)
        label = "B-ResNet (all modules)" if space_name == "bsn-resnet" else "B-CNF (all modules)"
        return name or label, {"keep": list(graph_of(space_name, net).gate_names)}, net

    return ref


for _space in ("bsn-resnet", "bsn-cnf"):
    register_scaling(_space, Scaling(_bsn_scale, _bsn_reference(_space)))


# ---- posterior-nas supernets: the width; a pruned net keeps each group's kept fraction -----------------
def _supnet_scale(space_name: str) -> Callable[[dict[str, Any], dict[str, Any], float, dict[str, Any]], SpecNet]:
    def scale(spec: dict[str, Any], net: dict[str, Any], k: float, extra: dict[str, Any]) -> SpecNet:
        space = _space_of(space_name)
        net = space.validate_net(net)
        width = _w(net["width"], k)
        if space.kind == "R":
            width = max(4, 4 * int(round(width / 4)))
        new_net = {**net, "width": width}
        if "stem" in net:
            new_net["stem"] = _w(net["stem"], k)
        new_net.update(extra)
        if not spec.get("keep"):
            return spec, new_net
        import torch

        old_plan, new_plan = space.plan(net), space.plan(new_net)
        mask = space.mask_of(spec, net)
        frac, start = {}, 0
        for g, c in old_plan.groups:
            frac[g] = float(mask[start:start + c].float().mean())
            start += c
        parts = []
        for g, c in new_plan.groups:  # the same fraction kept per group, spread evenly over its channels
            f = frac.get(g, 1.0)
            idx = torch.arange(c, dtype=torch.float64)
            parts.append(torch.floor((idx + 1) * f) > torch.floor(idx * f))
        return space.spec_of(torch.cat(parts), new_net), new_net

    return scale


def _supnet_reference(net: dict[str, Any], name: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    return name or "full supernet", {"keep": {}}, net


def _supnet_variants(net: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"stem": net["stem"] + d} for d in (1, -1, 2, -2, 3, -3, 4, -4)
            if "stem" in net and net["stem"] + d >= 1]


for _space in ("supnet-m", "supnet-mi", "supnet-r"):
    register_scaling(_space, Scaling(_supnet_scale(_space), _supnet_reference, _supnet_variants))


# ---- matching -----------------------------------------------------------------------------------------
def _space_of(name: str) -> Any:
    from nas_common.registry import SPACES

    return SPACES.get(name)


def _scaling(space_name: str) -> Scaling | None:
    space = _space_of(space_name)
    own_scale, own_ref = getattr(space, "scaled", None), getattr(space, "reference", None)
    if callable(own_scale) and callable(own_ref):  # the space knows best
        variants = SCALINGS[space_name].variants if space_name in SCALINGS else (lambda net: [])
        return Scaling(own_scale, lambda net, name: own_ref(net), variants)
    return SCALINGS.get(space_name)


def gap(macs: float, target: float) -> float:
    """Relative MAC difference macs / target - 1."""
    return macs / max(1.0, target) - 1.0


def counted(space: str, spec: dict[str, Any], net: dict[str, Any]) -> Arch:
    sp = _space_of(space)
    return Arch(space, sp.validate_spec(spec), sp.validate_net(net)).with_costs()


def fit_macs(make: Callable[[float], Arch], target: float, k0: float = 1.0, tol: float = MAC_TOLERANCE,
             steps: int = 16) -> tuple[Arch, float]:
    """The arch `make(k)` whose MACs are closest to `target` (MACs grow with k), and its k.

    Brackets the target by doubling/halving k, then bisects in log k until a point lies within half
    the tolerance; widths are integers, so MACs(k) is a step function and the closest of all evaluated
    points is returned.
    """
    cache: dict[float, Arch] = {}

    def at(k: float) -> float:
        if k not in cache:
            cache[k] = make(k)
        return gap(cache[k].costs["macs"], target)

    lo = hi = k0
    for _ in range(8):
        if at(lo) <= 0 or abs(at(lo)) <= tol / 2:
            break
        lo /= 2
    for _ in range(8):
        if at(hi) >= 0 or abs(at(hi)) <= tol / 2:
            break
        hi *= 2
    for _ in range(steps):
        if min(abs(at(lo)), abs(at(hi))) <= tol / 2 or hi / lo < 1.0005:
            break
        mid = math.sqrt(lo * hi)
        if at(mid) < 0:
            lo = mid
        else:
            hi = mid
    k, best = min(cache.items(), key=lambda kv: abs(gap(kv[1].costs["macs"], target)))
    return best, k


def _fit_scaled(sc: Scaling, space: str, spec: dict[str, Any], net: dict[str, Any], target: float,
                tol: float, reference: Callable[[dict[str, Any]], SpecNet] | None = None
                ) -> tuple[Arch, dict[str, Any]]:
    """Scale (spec, net) to `target` MACs, trying the space's variants when widths alone miss `tol`.

    `reference(net)`, when given, rebuilds the spec for each variant net (a reference network's spec
    can depend on the net, e.g. BSN's module names).
    """
    start = counted(space, spec, net)
    k0 = math.sqrt(target / max(1.0, start.costs["macs"]))
    best, k = fit_macs(lambda k: counted(space, *sc.scale(spec, net, k, {})), target, k0, tol)
    used: dict[str, Any] = {}
    if abs(gap(best.costs["macs"], target)) > tol:
        for extra in sc.variants(net):
            s, n = (spec, net) if reference is None else reference({**net, **extra})
            cand, kk = fit_macs(lambda k, s=s, n=n, e=extra: counted(space, *sc.scale(s, n, k, e)), target, k0, tol)
            if abs(gap(cand.costs["macs"], target)) < abs(gap(best.costs["macs"], target)):
                best, k, used = cand, kk, extra
            if abs(gap(best.costs["macs"], target)) <= tol:
                break
    return best, {"width_multiplier": k, **({"net_changed": used} if used else {})}


def random_arch_like(target: Arch, seed: int, tol: float = MAC_TOLERANCE, tries: int = 40,
                     max_seconds: float = 30.0, hopeless_after: int = 15) -> tuple[Arch, dict[str, Any]] | None:
    """A random arch of `target`'s space (same net) within `tol` of its MACs, and how it was matched.

    Draws up to `tries` times (and `max_seconds`; after `hopeless_after` draws none of which came
    within 4 x `tol`, the target is out of the sampler's reach), then rescales the closest draw. None
    when the space has no sampler. `target` must carry its costs (`Arch.with_costs()`).
    """
    space = _space_of(target.space)
    rng = random.Random(seed)
    want = target.costs["macs"]
    best, best_gap = None, math.inf
    t0 = time.monotonic()
    for t in range(1, tries + 1):
        if time.monotonic() - t0 > max_seconds:
            tries = t - 1
            break
        try:
            spec = space.random_spec(rng, dict(target.net))
        except NotImplementedError:
            return None
        cand = counted(target.space, spec, dict(target.net))
        g = gap(cand.costs["macs"], want)
        if abs(g) <= tol and cand != target:
            return cand, {"matched_by": "rejection", "draws": t, "mac_gap": g}
        if abs(g) < abs(best_gap) and cand != target:
            best, best_gap = cand, g
        if t >= hopeless_after and abs(best_gap) > 4 * tol:
            tries = t
            break
    info: dict[str, Any] = {"matched_by": "closest draw", "draws": tries}
    sc = _scaling(target.space)
    if best is not None and sc is not None:
        best, extra = _fit_scaled(sc, target.space, best.spec, best.net, want, tol)
        info = {"matched_by": "closest draw rescaled", "draws": tries, **extra}
    if best is None:
        return None
    info["mac_gap"] = gap(best.costs["macs"], want)
    return best, info


def reference_like(target: Arch, name: str | None = None, tol: float = MAC_TOLERANCE
                   ) -> tuple[Arch, dict[str, Any]] | None:
    """The space's reference network (or built-in `name`) scaled to `target`'s MACs; None if unknown."""
    sc = _scaling(target.space)
    if sc is None:
        return None
    label, spec, net = sc.reference(dict(target.net), name)
    arch, info = _fit_scaled(sc, target.space, spec, net, target.costs["macs"], tol,
                             reference=lambda n: sc.reference(n, name)[1:])
    return arch, {"reference": label, **info, "mac_gap": gap(arch.costs["macs"], target.costs["macs"])}
