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

    def registered(self, name: str) -> bool:
        """Whether `name` is registered in this process already, without loading plugins (for modules
        that register at import and may be imported twice)."""
        return name in self._items

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
COSTS: Registry[Any] = Registry("cost", entry_point_group=SPACE_GROUP)  # packages register their counting conventions
ARCHS: Registry[Any] = Registry("architecture", entry_point_group=SPACE_GROUP)


class MethodRegistry(Registry[Any]):
    """The methods: `SearchMethod` subclasses from the entry-point group `nas_common.methods`.

    Entry points are discovered on first use and each is imported only when its method is asked for,
    so `nas search tas` does not import the other packages. Two entry points with one name raise (a
    duplicate is a bug); so does an entry point whose class is not a SearchMethod named like it.
    `NAS_EXTRA_METHODS="name=module:Class,..."` adds entry points (a test hook that crosses processes).
    """

    def __init__(self) -> None:
        super().__init__("method", entry_point_group=METHOD_GROUP)
        self._eps: dict[str, metadata.EntryPoint] | None = None
        # set by nas_common.methods (which imports this module, not the other way round): raises
        # TypeError for anything that is not a complete SearchMethod subclass
        self.validate: Callable[[Any], None] = lambda cls: None

    def entry_points(self) -> dict[str, metadata.EntryPoint]:
        import os

        if self._eps is None:
            found: dict[str, metadata.EntryPoint] = {}
            for ep in metadata.entry_points(group=METHOD_GROUP):
                if ep.name in found and found[ep.name].value != ep.value:
                    raise RegistryError(f"method {ep.name!r} is registered twice: by {_provider(found[ep.name])} "
                                        f"and by {_provider(ep)}; uninstall one of them")
                found[ep.name] = ep
            self._eps = found
        eps = dict(self._eps)
        for item in filter(None, os.environ.get(EXTRA_METHODS_ENV, "").split(",")):
            name, _, value = item.partition("=")
            if name.strip() and value.strip():
                eps[name.strip()] = metadata.EntryPoint(name.strip(), value.strip(), METHOD_GROUP)
        return eps

    def _load_plugins(self) -> None:  # names() and items(): load every method
        for name in self.entry_points():
            if name not in self._items:
                self._load(name)

    def _load(self, name: str) -> Any:
        ep = self.entry_points()[name]
        cls = ep.load()
        try:
            self.validate(cls)
        except TypeError as e:
            raise RegistryError(f"entry point {name!r} ({ep.value}): {e}") from None
        if cls.name != name:
            raise RegistryError(f"entry point {name!r} ({ep.value}) loads a method named {cls.name!r}")
        self._items[name] = cls
        return cls

    def get(self, name: str) -> Any:
        if name in self._items:
            return self._items[name]
        if name in self.entry_points():
            return self._load(name)
        names = sorted(set(self.entry_points()) | set(self._items))
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise RegistryError(f"unknown method {name!r}: {hint}installed: {', '.join(names) or 'none'} "
                            f"(install a method package, e.g. `pip install ista-nas`)")

    def names(self, pattern: str | None = None) -> list[str]:
        keys = sorted(set(self.entry_points()) | set(self._items))
        return [k for k in keys if fnmatch.fnmatch(k, pattern)] if pattern else keys

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self.entry_points()

    def register(self, name: str | None = None, obj: Any = None) -> Any:
        self.validate(obj)
        key = name or obj.name
        if key in self:
            raise RegistryError(f"method {key!r} is registered twice")
        return super().register(key, obj)


def _provider(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} ({ep.value})" if dist is not None else ep.value


# test hook that crosses process boundaries (the harness runs jobs in subprocesses):
# NAS_EXTRA_METHODS="name=module:Class,other=module:Class" adds methods as if they were entry points
EXTRA_METHODS_ENV = "NAS_EXTRA_METHODS"
METHODS = MethodRegistry()


def list_methods(pattern: str | None = None) -> list[str]:
    """Names of the installed methods (entry points) and those registered in-process."""
    return METHODS.names(pattern)


def get_method(name: str) -> Any:
    """The method class registered under `name`, loading its package on first use."""
    return METHODS.get(name)


def method_version(name: str) -> str | None:
    """The version of the distribution that provides method `name`, if it comes from one."""
    ep = METHODS.entry_points().get(name)
    dist = getattr(ep, "dist", None) if ep is not None else None
    return dist.version if dist is not None else None


def register_method(name: str, cls: Any) -> Any:
    """Register a method class in this process (tests and notebooks; packages use entry points)."""
    return METHODS.register(name, cls)


def unregister_method(name: str) -> None:
    METHODS.unregister(name)
