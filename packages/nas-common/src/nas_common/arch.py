"""The architecture file: one format ("nas-arch/1") for whatever any method finds.

    {"format": "nas-arch/1", "space": "darts", "spec": {...}, "net": {"C": 36, "layers": 20,
     "num_classes": 10, "input": [3, 32, 32]}, "costs": {"macs": 5.3e8, "params": 3.3e6},
     "method": "ista-nas", "provenance": {...}}

An `Arch` is an immutable value with a canonical string and a hash, kept apart from the nn.Module
built from it. Loading validates every field and names the bad one.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from .errors import ArchFileError, RegistryError
from .io import atomic_write_text
from .registry import ARCHS, SPACES

FORMAT = "nas-arch/1"
_KEYS = {"format", "space", "spec", "net", "costs", "method", "provenance"}


@dataclass(frozen=True)
class Arch:
    space: str
    spec: dict[str, Any]
    net: dict[str, Any]
    costs: dict[str, float] = field(default_factory=dict)
    method: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    # ---- identity -----------------------------------------------------------------------------
    def canonical(self) -> str:
        """Canonical JSON of what defines the network (space, spec, net); equal archs, equal strings."""
        return json.dumps({"space": self.space, "spec": self.spec, "net": self.net}, sort_keys=True,
                          separators=(",", ":"))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:12]

    def __hash__(self) -> int:
        return hash(self.canonical())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Arch) and self.canonical() == other.canonical()

    # ---- conversion ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT, "space": self.space, "spec": self.spec, "net": self.net,
                             "costs": dict(self.costs)}
        if self.method:
            d["method"] = self.method
        if self.provenance:
            d["provenance"] = self.provenance
        return d

    @classmethod
    def from_dict(cls, data: Any, source: str = "architecture") -> Arch:
        """Validate a decoded arch.json; errors name `source` and the bad field."""
        try:
            return _from_dict(data)
        except ArchFileError as e:
            raise ArchFileError(f"{source}: {e}") from None

    def with_costs(self, device: Any = None) -> Arch:
        """This arch with `costs` (macs, params) counted exactly on the meta device (nothing allocated;
        `device` is accepted for compatibility and unused)."""
        from .costs import count_costs

        return replace(self, costs=count_costs(self))

    def replace(self, **changes: Any) -> Arch:
        return replace(self, **changes)

    # ---- building -----------------------------------------------------------------------------
    def build(self) -> nn.Module:
        return SPACES.get(self.space).build(self.spec, self.net)

    def describe(self) -> str:
        return SPACES.get(self.space).describe(self.spec)


def _from_dict(data: Any) -> Arch:
    if not isinstance(data, dict):
        raise ArchFileError(f"must be a JSON object, got {type(data).__name__}")
    fmt = data.get("format")
    if fmt != FORMAT:
        raise ArchFileError(f"format must be {FORMAT!r}, got {fmt!r} (is this an architecture file?)")
    unknown = set(data) - _KEYS
    if unknown:
        raise ArchFileError(f"unknown field(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_KEYS))}")
    space_name = data.get("space")
    if not isinstance(space_name, str):
        raise ArchFileError(f"space must be a string naming a space ({', '.join(SPACES.names())}), got {space_name!r}")
    try:
        space = SPACES.get(space_name)
    except RegistryError as e:
        raise ArchFileError(f"space: {e}") from None
    if "spec" not in data:
        raise ArchFileError("spec is missing: it holds the architecture (a genotype, widths, ...)")
    if "net" not in data:
        raise ArchFileError("net is missing: it holds num_classes, input and the space's sizes")
    spec = space.validate_spec(data["spec"])
    net = space.validate_net(data["net"])
    costs = data.get("costs", {}) or {}
    if not isinstance(costs, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in costs.values()
    ):
        raise ArchFileError(f"costs must map names to numbers, got {costs!r}")
    method = data.get("method")
    if method is not None and not isinstance(method, str):
        raise ArchFileError(f"method must be a string, got {method!r}")
    prov = data.get("provenance", {}) or {}
    if not isinstance(prov, dict):
        raise ArchFileError(f"provenance must be an object, got {prov!r}")
    return Arch(space_name, spec, net, {k: float(v) for k, v in costs.items()}, method, prov)


def save_arch(arch: Arch, path: str | Path) -> Path:
    """Write `arch` as JSON, atomically."""
    atomic_write_text(path, json.dumps(arch.to_dict(), indent=2, sort_keys=False) + "\n")
    return Path(path)


def load_arch(path: str | Path) -> Arch:
    """Read and validate an arch.json (or a run directory holding one)."""
    from .io import read_text

    p = Path(path)
    if p.is_dir():
        if not (p / "arch.json").exists():
            raise ArchFileError(f"{str(p)!r} is a directory without an arch.json: give an arch.json file or the "
                                f"--out directory of a `nas search` or `nas train` run")
        p = p / "arch.json"
    text = read_text(p, "architecture file", f"an arch.json or a built-in name ({', '.join(ARCHS.names())})",
                     ArchFileError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArchFileError(f"{p}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    return Arch.from_dict(data, source=str(p))


def get_arch(name_or_path: str | Path | Arch) -> Arch:
    """An Arch from an Arch, a built-in name (`resnet56`, `darts-v2`, ...), a file or a run directory."""
    if isinstance(name_or_path, Arch):
        return name_or_path
    s = str(name_or_path)
    if s in ARCHS:
        return ARCHS.get(s)()
    p = Path(s)
    if p.exists() or s.endswith(".json") or os.sep in s:
        return load_arch(p)
    raise ArchFileError(
        f"{s!r} is neither a file nor a built-in architecture: {ARCHS._unknown(s).split(': ', 1)[1]}"
    )


def register_arch(name: str, factory: Any) -> Any:
    """Register a built-in architecture: `factory()` returns an Arch."""
    return ARCHS.register(name, factory)


def list_archs(pattern: str | None = None) -> list[str]:
    return ARCHS.names(pattern)


def build_model(arch: str | Path | Arch) -> nn.Module:
    return get_arch(arch).build()
