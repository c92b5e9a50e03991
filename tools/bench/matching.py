"""Architectures at a given cost: random architectures of a space within a MAC tolerance of a target,
and the space's reference network scaled to the target's MACs.

A baseline at a different cost proves nothing, so every baseline the harness trains is matched to the
found network's MACs (counted at the shared recipe's size):

* `random_arch_like(target, seed)` draws from the space's own uniform sampler (`Space.random_spec`)
  and keeps the first draw within the tolerance (rejection sampling: a uniform draw *given* the cost).
  When no draw lands within `tries` (the target lies in a tail the sampler rarely reaches, e.g. a NAT
  cell full of skips), the closest draw is widened or narrowed uniformly (`Space.scaled`) until it
  does; the result says which of the two happened (`matched_by`).
* `reference_like(target)` scales the space's reference network (`Space.reference`: ResNet-56,
  DARTS-V2, the full B-ResNet or supernet) to the same MACs.

Everything space-specific comes from the space's own hooks (`nas_common.spaces.base.Space`):
`random_spec`, `scaled(spec, net, k)`, `reference(net)`, `size_variants(net)` (other net settings to
try where integer widths step over the tolerance) and `costs(spec, net)` (closed-form MACs, used
instead of counting where the space has it). The harness names no space and imports no method
package. A space that lacks a hook a baseline needs raises `MissingSpaceHook` naming it, which the
job records as its row's error.
"""
from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import Callable
from typing import Any

from nas_common.arch import Arch
from nas_common.errors import ConfigError

MAC_TOLERANCE = 0.05  # |MACs / target - 1| of every random and reference baseline

SpecNet = tuple[dict[str, Any], dict[str, Any]]

#: the Space hooks the harness calls, and what it needs each one for
HOOKS = {
    "random_spec": "random architectures of the space (Space.random_spec(rng, net))",
    "scaled": "widening or narrowing a network to a target cost (Space.scaled(spec, net, k))",
    "reference": "the space's reference network (Space.reference(net) -> (name, spec, net))",
}


class MissingSpaceHook(ConfigError):
    """A space does not implement a `Space` hook that a baseline of the harness needs."""

    def __init__(self, space: str, hook: str, detail: str = "") -> None:
        self.space, self.hook = space, hook
        super().__init__(f"space {space!r} does not implement Space.{hook}, needed for {HOOKS[hook]}"
                         f"{': ' + detail if detail else ''}; the package that registers the space must add it")


def _space_of(name: str) -> Any:
    from nas_common.registry import SPACES

    return SPACES.get(name)


def has_hook(space_name: str, hook: str) -> bool:
    """Whether the space overrides the `Space` base class's `hook` (whose default raises)."""
    from nas_common.spaces.base import Space

    impl = getattr(type(_space_of(space_name)), hook, None)
    return impl is not None and impl is not getattr(Space, hook, None)


def _require(space_name: str, hook: str, detail: str = "") -> None:
    if not has_hook(space_name, hook):
        raise MissingSpaceHook(space_name, hook, detail)


def gap(macs: float, target: float) -> float:
    """Relative MAC difference macs / target - 1."""
    return macs / max(1.0, target) - 1.0


def counted(space: str, spec: dict[str, Any], net: dict[str, Any]) -> Arch:
    """The arch with its MACs and params: the space's closed form (`Space.costs`) where it has one,
    else counted on the built network."""
    sp = _space_of(space)
    spec, net = sp.validate_spec(spec), sp.validate_net(net)
    closed = sp.costs(spec, net)
    if closed is not None:
        return Arch(space, spec, net, costs={"macs": float(closed["macs"]), "params": float(closed["params"])})
    return Arch(space, spec, net).with_costs()


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


def _fit_scaled(space_name: str, spec: dict[str, Any], net: dict[str, Any], target: float, tol: float,
                respec: Callable[[dict[str, Any]], SpecNet] | None = None) -> tuple[Arch, dict[str, Any]]:
    """Scale (spec, net) to `target` MACs with `Space.scaled`, trying `Space.size_variants` of the net
    when widths alone miss `tol`.

    `respec(net)`, when given, rebuilds (spec, net) for each variant net (a reference network's spec can
    depend on the net, e.g. the module names of a super graph).
    """
    space = _space_of(space_name)

    # a space whose specs depend on the net's size keys (SupNet-M's keep bits count the stem's channels)
    # takes the variant as `scaled(spec, net, k, extra)`, reading the spec on its own net
    takes_extra = "extra" in inspect.signature(space.scaled).parameters

    def make(s: dict[str, Any], n: dict[str, Any], extra: dict[str, Any] | None = None) -> Callable[[float], Arch]:
        if extra and takes_extra:
            return lambda k: counted(space_name, *space.scaled(s, n, k, extra))
        n = {**n, **(extra or {})}
        return lambda k: counted(space_name, *space.scaled(s, n, k))

    start = counted(space_name, spec, net)
    k0 = math.sqrt(target / max(1.0, start.costs["macs"]))
    best, k = fit_macs(make(spec, net), target, k0, tol)
    used: dict[str, Any] = {}
    if abs(gap(best.costs["macs"], target)) > tol:
        for extra in space.size_variants(net):
            maker = make(spec, net, extra) if respec is None else make(*respec({**net, **extra}))
            cand, kk = fit_macs(maker, target, k0, tol)
            if abs(gap(cand.costs["macs"], target)) < abs(gap(best.costs["macs"], target)):
                best, k, used = cand, kk, extra
            if abs(gap(best.costs["macs"], target)) <= tol:
                break
    return best, {"width_multiplier": k, **({"net_changed": used} if used else {})}


def random_arch_like(target: Arch, seed: int, tol: float = MAC_TOLERANCE, tries: int = 40,
                     max_seconds: float = 30.0, hopeless_after: int = 15) -> tuple[Arch, dict[str, Any]]:
    """A random arch of `target`'s space (same net) within `tol` of its MACs, and how it was matched.

    Draws up to `tries` times (and `max_seconds`; after `hopeless_after` draws none of which came
    within 4 x `tol`, the target is out of the sampler's reach), then rescales the closest draw.
    `target` must carry its costs (`counted` or `Arch.with_costs()`). Raises `MissingSpaceHook` when
    the space has no sampler, or when no draw came within `tol` and the space cannot scale networks.
    """
    _require(target.space, "random_spec")
    space = _space_of(target.space)
    rng = random.Random(seed)
    want = target.costs["macs"]
    best, best_gap = None, math.inf
    t0 = time.monotonic()
    for t in range(1, tries + 1):
        if time.monotonic() - t0 > max_seconds:
            tries = t - 1
            break
        cand = counted(target.space, space.random_spec(rng, dict(target.net)), dict(target.net))
        g = gap(cand.costs["macs"], want)
        if abs(g) <= tol and cand != target:
            return cand, {"matched_by": "rejection", "draws": t, "mac_gap": g}
        if abs(g) < abs(best_gap) and cand != target:
            best, best_gap = cand, g
        if t >= hopeless_after and abs(best_gap) > 4 * tol:
            tries = t
            break
    if best is None:
        raise ConfigError(f"the {target.space} sampler drew only the target itself in {tries} draws")
    _require(target.space, "scaled", f"no random draw of {tries} came within {100 * tol:g}% of the target's "
                                     f"MACs (closest {100 * best_gap:+.0f}%) and it cannot be rescaled")
    best, extra = _fit_scaled(target.space, best.spec, best.net, want, tol)
    return best, {"matched_by": "closest draw rescaled", "draws": tries, **extra,
                  "mac_gap": gap(best.costs["macs"], want)}


def reference_like(target: Arch, name: str | None = None, tol: float = MAC_TOLERANCE
                   ) -> tuple[Arch, dict[str, Any]]:
    """The space's reference network (`Space.reference`, or the built-in arch `name` of the same space)
    scaled to `target`'s MACs. Raises `MissingSpaceHook` when the space lacks `reference` or `scaled`."""
    space_name = target.space
    _require(space_name, "scaled")
    space = _space_of(space_name)
    if name is not None:
        from nas_common.arch import get_arch

        ref = get_arch(name)
        if ref.space != space_name:
            raise ConfigError(f"reference {name!r} is a {ref.space} network, not one of the {space_name} space")

        def respec(net: dict[str, Any]) -> SpecNet:
            return ref.spec, space.validate_net(net)

        label = name
    else:
        _require(space_name, "reference")

        def respec(net: dict[str, Any]) -> SpecNet:
            return space.reference(net)[1:]

        label = space.reference(dict(target.net))[0]
    spec, net = respec(dict(target.net))
    arch, info = _fit_scaled(space_name, spec, net, target.costs["macs"], tol, respec=respec)
    return arch, {"reference": label, **info, "mac_gap": gap(arch.costs["macs"], target.costs["macs"])}


def reference_macs(space_name: str, net: dict[str, Any]) -> float | None:
    """MACs of the space's reference network at `net` (None when the space names none)."""
    if not has_hook(space_name, "reference"):
        return None
    _, spec, net = _space_of(space_name).reference(net)
    return counted(space_name, spec, net).costs["macs"]
