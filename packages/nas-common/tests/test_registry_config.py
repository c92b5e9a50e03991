from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nas_common.config import Config, config_to_dict, parse_overrides, resolve_config, to_toml
from nas_common.errors import ConfigError, RegistryError
from nas_common.registry import Registry, get_method, list_methods, register_method, unregister_method


def test_registry_rejects_duplicates_and_suggests_names() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("sep_conv_3x3", 1)
    with pytest.raises(RegistryError, match="registered twice"):
        reg.register("sep_conv_3x3", 2)
    with pytest.raises(RegistryError, match="did you mean 'sep_conv_3x3'"):
        reg.get("sep_conv_3x4")
    assert reg.names("sep_*") == ["sep_conv_3x3"]


def test_register_method_test_hook() -> None:
    from nas_common.methods import SearchMethod

    class Fake(SearchMethod):
        name = "fake-for-registry"
        config_cls = Config

        def search(self, task, config, run):  # noqa: ANN001, ANN201
            raise NotImplementedError

        def derive(self, result):  # noqa: ANN001, ANN201
            raise NotImplementedError

    register_method("fake-for-registry", Fake)
    try:
        assert "fake-for-registry" in list_methods()
        assert get_method("fake-for-registry") is Fake
    finally:
        unregister_method("fake-for-registry")
    with pytest.raises(RegistryError, match="unknown method"):
        get_method("fake-for-registry")
    with pytest.raises(TypeError, match="SearchMethod subclass"):
        register_method("not-a-method", object)


@dataclass(frozen=True)
class Opt(Config):
    lr: float = 0.1
    betas: tuple[float, float] = (0.5, 0.999)


@dataclass(frozen=True)
class Cfg(Config):
    epochs: int = 50
    name: str = "a"
    flag: bool = False
    limit: float | None = None
    opt: Opt = field(default_factory=Opt)
    PRESETS = {"paper": {}, "tiny": {"epochs": 2, "opt": {"lr": 0.05}}}


def test_presets_file_and_overrides_apply_in_order(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("epochs = 7\n[opt]\nlr = 0.2\n")
    cfg = resolve_config(Cfg, preset="tiny", file=f, overrides=["opt.betas=0.9,0.99", "flag=true", "limit=1e6"])
    assert cfg.epochs == 7 and cfg.opt.lr == 0.2 and cfg.opt.betas == (0.9, 0.99)
    assert cfg.flag is True and cfg.limit == 1e6
    assert resolve_config(Cfg, preset="tiny").opt.lr == 0.05
    assert resolve_config(Cfg).epochs == 50


def test_config_round_trips_through_toml() -> None:
    import tomllib

    cfg = resolve_config(Cfg, preset="tiny", overrides=["name=x y"])
    again = resolve_config(Cfg, preset=None, file=tomllib.loads(to_toml(config_to_dict(cfg))))
    assert again == cfg


@pytest.mark.parametrize("bad, msg", [
    (["epoch=3"], "did you mean epochs"),
    (["epochs=three"], "takes an integer"),
    (["flag=maybe"], "true or false"),
    (["opt.betas=1,2,3"], "takes 2 values"),
    (["epochs.x=1"], "not a section"),
    (["novalue"], "KEY=VALUE"),
])
def test_bad_overrides_name_the_problem(bad: list[str], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        resolve_config(Cfg, overrides=bad)


def test_unknown_preset_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="valid: paper, tiny"):
        resolve_config(Cfg, preset="huge")


def test_parse_overrides_keeps_strings() -> None:
    assert parse_overrides(["a=1", "b.c = x"]) == {"a": "1", "b.c": "x"}
