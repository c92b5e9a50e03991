"""Name -> object registries, for ops, spaces, datasets, costs, built-in architectures and methods.

Importing a module that registers things makes them listable and usable by name (as timm registers
models). Methods come from other distributions, through the entry-point group `nas_common.methods`,
and are loaded lazily so that `nas list` does not import every method package.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

from .errors import RegistryError

T = TypeVar("T")

METHOD_GROUP = "nas_common.methods"


class Registry(Generic[T]):
    """A strict name -> object map: duplicate names raise, unknown names suggest the nearest ones."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._group = entry_point_group
        self._plugins_loaded = entry_point_group is None

    def _load_plugins(self) -> None:
        """Import the modules other distributions declare under `entry_point_group` (they register)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self._group):
            try:
                ep.load()
            except Exception as e:  # a broken plugin must not hide the others
                import warnings

                warnings.warn(f"cannot load {self.kind} plugin {ep.name!r} ({ep.value}): {e}", stacklevel=2)

    def register(self, name: str | None = None, obj: T | None = None) -> Callable[[T], T] | T:
        """Register `obj` under `name`; used bare, as `@reg.register("name")`, it decorates."""

        def add(o: T) -> T:
            key = name or getattr(o, "__name__", None)
            if not key:
                raise ValueError(f"cannot register an unnamed {self.kind}")
            if key in self._items:
                raise RegistryError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = o
            return o

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._items:
            self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(self._unknown(name)) from None

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self._items, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        return f"unknown {self.kind} {name!r}: {hint}valid: {', '.join(sorted(self._items))}"

    def names(self, pattern: str | None = None) -> list[str]:
        self._load_plugins()
        keys = sorted(self._items)
        return [k for k in keys if fnmatch.fnmatch(k, pattern)] if pattern else keys

    def items(self) -> list[tuple[str, T]]:
        self._load_plugins()
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


OPS: Registry[Any] = Registry("op")
# method packages may add spaces (and their built-in archs) through these entry-point groups, whose
# values are modules that register on import: `[project.entry-points."nas_common.spaces"] bsn = "bsn_nas.spaces"`
SPACE_GROUP = "nas_common.spaces"
SPACES: Registry[Any] = Registry("space", entry_point_group=SPACE_GROUP)
DATASETS: Registry[Any] = Registry("dataset")
COSTS: Registry[Any] = Registry("cost")
ARCHS: Registry[Any] = Registry("architecture", entry_point_group=SPACE_GROUP)

# methods registered in-process (tests, notebooks) on top of the entry points
_EXTRA_METHODS: dict[str, Any] = {}
# test hook that crosses process boundaries (the harness runs jobs in subprocesses):
# NAS_EXTRA_METHODS="name=module:Class,other=module:Class" adds methods as if they were entry points
EXTRA_METHODS_ENV = "NAS_EXTRA_METHODS"


def _entry_points() -> dict[str, metadata.EntryPoint]:
    import os

    eps = {ep.name: ep for ep in metadata.entry_points(group=METHOD_GROUP)}
    for item in filter(None, os.environ.get(EXTRA_METHODS_ENV, "").split(",")):
        name, _, value = item.partition("=")
        if name.strip() and value.strip():
            eps[name.strip()] = metadata.EntryPoint(name.strip(), value.strip(), METHOD_GROUP)
    return eps


def list_methods() -> list[str]:
    """Names of the installed methods (entry points) and those registered in-process."""
    return sorted(set(_entry_points()) | set(_EXTRA_METHODS))


def get_method(name: str) -> Any:
    """The method class registered under `name`, loading its package on first use."""
    if name in _EXTRA_METHODS:
        return _EXTRA_METHODS[name]
    eps = _entry_points()
    if name not in eps:
        names = list_methods()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        installed = ", ".join(names) or "none"
        raise RegistryError(
            f"unknown method {name!r}: {hint}installed: {installed} "
            f"(install a method package, e.g. `pip install ista-nas`)"
        )
    return eps[name].load()


def method_version(name: str) -> str | None:
    """The version of the distribution that provides method `name`, if it comes from one."""
    ep = _entry_points().get(name)
    if ep is None or ep.dist is None:
        return None
    return ep.dist.version


def register_method(name: str, cls: Any) -> Any:
    """Register a method class in this process (the test hook; packages use entry points)."""
    if name in _EXTRA_METHODS or name in _entry_points():
        raise RegistryError(f"method {name!r} is registered twice")
    _EXTRA_METHODS[name] = cls
    return cls


def unregister_method(name: str) -> None:
    _EXTRA_METHODS.pop(name, None)
