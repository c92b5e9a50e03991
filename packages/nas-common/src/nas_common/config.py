"""Configs: frozen dataclasses with the paper's values as defaults, named presets, TOML and `-o` overrides.

Resolution order (later wins): dataclass defaults (the paper) -> preset -> TOML file -> `-o key=value`.
The resolved config is saved in every run directory and checkpoint, so a run says how it was made.

    @dataclass(frozen=True)
    class MyConfig(Config):
        epochs: int = 50
        lr: float = 0.1
        PRESETS = {"paper": {}, "tiny": {"epochs": 2}}

    cfg = resolve_config(MyConfig, preset="tiny", overrides=["lr=0.05"])
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError

C = TypeVar("C", bound="Config")


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every config. Subclasses are frozen dataclasses; PRESETS maps name -> overrides."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"paper": {}}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's own `__post_init__` (its range checks) runs after the field types are checked,
        so `TrainConfig(epochs="3")` is a one-line ConfigError, not a TypeError deep inside."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "_checks_types", False):
            def __post_init__(self: Config, *args: Any) -> None:
                validate_fields(self)
                own(self, *args)

            __post_init__._checks_types = True  # type: ignore[attr-defined]
            __post_init__.__doc__ = own.__doc__
            cls.__post_init__ = __post_init__  # type: ignore[method-assign]

    def __post_init__(self) -> None:
        validate_fields(self)

    def replace(self: C, **changes: Any) -> C:
        return resolve_config(type(self), preset=None, base=self, values=changes)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = config_to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def list_presets(cls: type) -> list[str]:
    return sorted(getattr(cls, "PRESETS", {"paper": {}}))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_HINTS_CACHE: dict[type, dict[str, Any] | None] = {}


def validate_fields(cfg: Any) -> None:
    """Check every field of the dataclass `cfg` against its annotation, as `resolve_config` checks
    TOML and `-o` values (without parsing strings): a wrong type or a value outside a Literal is a
    one-line ConfigError naming the field. Lists given for tuple fields become tuples."""
    cls = type(cfg)
    if cls not in _HINTS_CACHE:
        try:
            _HINTS_CACHE[cls] = typing.get_type_hints(cls)
        except (NameError, TypeError):  # annotations that cannot be resolved at run time: not checked
            _HINTS_CACHE[cls] = None
    hints = _HINTS_CACHE[cls]
    if hints is None:
        return
    for f in dataclasses.fields(cfg):
        if not f.init or f.name not in hints:
            continue
        value = getattr(cfg, f.name)
        try:
            checked = _check_type(value, hints[f.name], f.name)
        except ConfigError as e:
            raise ConfigError(f"{cls.__name__}: {e}") from None
        if checked is not value:
            object.__setattr__(cfg, f.name, checked)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """`value` if it fits annotation `tp` (an integral float for an int, a list for a tuple: converted),
    else ConfigError. Unknown annotation forms are accepted as they are."""
    origin = typing.get_origin(tp)
    if tp is Any or isinstance(tp, (typing.TypeVar, str)):
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        first = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, key)
            except ConfigError as e:
                first = first or e
        names = " or ".join(_type_name(a) if a is not type(None) else "None" for a in args)
        raise ConfigError(f"{key} takes {names}, got {value!r}") from None
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices and not (isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)):
            return value
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, choices))}")
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} takes a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key} takes {len(args)} values, got {len(value)}: {value!r}")
            items = [_check_type(v, a, key) for v, a in zip(value, args, strict=True)]
        else:
            inner = args[0] if args else Any
            items = [_check_type(v, inner, key) for v in value]
        out = tuple(items) if origin is tuple else list(items)
        return value if type(value) is type(out) and all(a is b for a, b in zip(items, value, strict=True)) else out
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} takes a table (a dict), got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} takes true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} takes an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} takes a number, got {value!r}")
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{key} takes a number, got NaN")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} takes a string, got {value!r}")
        return value
    if tp is Path:
        if isinstance(value, (str, Path)):
            return value
        raise ConfigError(f"{key} takes a path, got {value!r}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{key} takes a {tp.__name__}, got {value!r}")
    return value


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from TOML or a CLI string) to the annotated type `tp`, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot use {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, choices))}")
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = _parse_scalar(value, key, prefer_list=True)
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key} takes {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=False))
        inner = args[0] if args else Any
        seq = [_coerce(v, inner, key) for v in value]
        return tuple(seq) if origin is tuple else seq
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} takes true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} takes an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise ConfigError(f"{key} takes an integer, got {value!r}") from None
            if f.is_integer():
                return int(f)
        raise ConfigError(f"{key} takes an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} takes a number, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} takes a number, got {value!r}") from None
        if math.isnan(f):
            raise ConfigError(f"{key} takes a number, got NaN")
        return f
    if tp is str:
        return str(value)
    return value


def _parse_scalar(text: str, key: str, prefer_list: bool = False) -> Any:
    """Parse a CLI value as a TOML value when it is one ("3", "1e-3", "[1, 2]", "true"), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    if prefer_list and "," in text:
        return [_parse_scalar(t.strip(), key) for t in text.split(",") if t.strip()]
    return text


def _apply(cls: type, base: dict[str, Any], values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Merge `values` (possibly nested, possibly dotted keys) into `base` with type checks."""
    fields = _fields(cls)
    hints = _hints(cls)
    for raw_key, value in values.items():
        head, _, rest = raw_key.partition(".")
        if head not in fields:
            close = difflib.get_close_matches(head, fields, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ConfigError(
                f"unknown config key {raw_key!r} ({source}) for {cls.__name__}: {hint}"
                f"valid keys: {', '.join(fields)}"
            )
        tp = hints[head]
        if dataclasses.is_dataclass(tp):
            sub = base.get(head)
            sub_dict = config_to_dict(sub) if dataclasses.is_dataclass(sub) else dict(sub or {})
            nested = {rest: value} if rest else value
            if not isinstance(nested, Mapping):
                raise ConfigError(f"{raw_key} is a section; set its keys as {raw_key}.KEY=VALUE")
            base[head] = _apply(tp, sub_dict, nested, source)
        else:
            if rest:
                raise ConfigError(f"{head} is not a section: use {head}=VALUE, not {raw_key}")
            base[head] = _coerce(value, tp, raw_key)
    return base


def _build(cls: type[C], values: dict[str, Any]) -> C:
    hints = _hints(cls)
    kwargs = {}
    for name, v in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(v, Mapping):
            v = _build(tp, dict(v))
        kwargs[name] = v
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {cls.__name__}: {e}") from None


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["a=1", "opt.lr=0.1"]` -> `{"a": "1", "opt.lr": "0.1"}` (values coerced later, by field type)."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. -o epochs=10)")
        out[key.strip()] = value.strip()
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    from .io import read_text

    p = Path(path)
    text = read_text(p, "config file", "a .toml file", ConfigError)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None


RECORD_KEYS = ("kind", "config")


def is_run_record(data: Mapping[str, Any]) -> bool:
    """Whether `data` is a run's config.toml (kind, method, dataset, ..., [config]) rather than a table
    of config values."""
    return isinstance(data.get("kind"), str) and isinstance(data.get("config"), Mapping)


def record_config(data: Mapping[str, Any], cls: type) -> Mapping[str, Any]:
    """The config values of `data`: its [config] table when it is a run's own config.toml (so
    `--config RUN/config.toml` reproduces that run's resolved config), else `data` itself."""
    if is_run_record(data) and "kind" not in _fields(cls):
        return data["config"]
    return data


def check_record_file(file: Any, *, kind: str, method: str | None = None) -> None:
    """Refuse a run's config.toml given as --config to a command of another kind or method (a TAS
    search's config to `nas train`, a BSN search's to `nas search tas`); plain value files pass."""
    if file is None or isinstance(file, Mapping):
        return
    data = load_toml(file)
    if not is_run_record(data):
        return
    theirs = f"`nas {data['kind']}" + (f" {data['method']}`" if data.get("method") else "`")
    ours = f"`nas {kind}" + (f" {method}`" if method else "`")
    if data["kind"] != kind or (method is not None and data.get("method") != method):
        raise ConfigError(f"--config {str(file)!r} is the config.toml of a {theirs} run, not of a {ours} run: "
                          f"give a config of the same command")


def resolve_config(
    cls: type[C],
    preset: str | None = "paper",
    file: str | Path | Mapping[str, Any] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    base: C | None = None,
    values: Mapping[str, Any] | None = None,
) -> C:
    """The config of class `cls`: defaults, then `preset`, then a TOML file (or dict), then overrides."""
    current: dict[str, Any] = config_to_dict(base) if base is not None else {}
    presets = getattr(cls, "PRESETS", {"paper": {}})
    if preset is not None:
        if preset not in presets:
            raise ConfigError(
                f"unknown preset {preset!r} for {cls.__name__}: valid: {', '.join(sorted(presets))}"
            )
        current = _apply(cls, current, presets[preset], f"preset {preset}")
    if file is not None:
        data = file if isinstance(file, Mapping) else load_toml(file)
        data = record_config(data, cls)
        current = _apply(cls, current, data, f"file {file}" if not isinstance(file, Mapping) else "dict")
    if overrides:
        ov = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
        current = _apply(cls, current, ov, "override")
    if values:
        current = _apply(cls, current, values, "value")
    return _build(cls, current)


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a config saved by `config_to_dict` (e.g. from a checkpoint or config.toml)."""
    return resolve_config(cls, preset=None, file=dict(data))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
            return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    """A bare key when TOML allows one, else a quoted one (`"distributed:2"`)."""
    return k if k and all(c.isalnum() or c in "-_" for c in k) else json.dumps(k)


def to_toml(data: Mapping[str, Any]) -> str:
    """A small TOML writer for config dicts (scalars, arrays, nested tables; None values are left out)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, Mapping):
            tables.append((_toml_key(k), v))
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")

    def emit(prefix: str, table: Mapping[str, Any]) -> None:
        lines.append("")
        lines.append(f"[{prefix}]")
        subs = []
        for k, v in table.items():
            if v is None:
                continue
            if isinstance(v, Mapping):
                subs.append((f"{prefix}.{_toml_key(k)}", v))
            else:
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for p, t in subs:
            emit(p, t)

    for name, t in tables:
        emit(name, t)
    return "\n".join(lines).lstrip("\n") + "\n"
