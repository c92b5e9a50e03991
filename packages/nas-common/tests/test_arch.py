from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from nas_common.arch import Arch, get_arch, load_arch, save_arch
from nas_common.errors import ArchFileError
from nas_common.registry import SPACES
from nas_common.spaces.base import Space


class ToySpace(Space):
    """A stack of linear layers of given widths: just enough space to test the file format."""

    name = "toy-test"
    default_net = {"num_classes": 10, "input": [3, 4, 4]}

    def validate_spec(self, spec: Any) -> dict[str, Any]:
        if not isinstance(spec, dict) or not isinstance(spec.get("widths"), list):
            raise ArchFileError("spec.widths must be a list of positive integers")
        for i, w in enumerate(spec["widths"]):
            if not isinstance(w, int) or w < 1:
                raise ArchFileError(f"spec.widths[{i}] must be a positive integer, got {w!r}")
        return {"widths": list(spec["widths"])}

    def build(self, spec: dict[str, Any], net: dict[str, Any]) -> nn.Module:
        dims = [int(torch.tensor(net["input"]).prod()), *spec["widths"], net["num_classes"]]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    def random_spec(self, rng: random.Random, net: dict[str, Any]) -> dict[str, Any]:
        return {"widths": [rng.randint(1, 8)]}


@pytest.fixture(autouse=True)
def toy_space():
    SPACES.register("toy-test", ToySpace())
    yield
    SPACES.unregister("toy-test")


def toy() -> Arch:
    return Arch("toy-test", {"widths": [8, 4]}, {"num_classes": 10, "input": [3, 4, 4]})


def test_save_load_round_trip_is_atomic_and_equal(tmp_path: Path) -> None:
    arch = toy().with_costs()
    assert arch.costs == {"macs": 48 * 8 + 8 * 4 + 4 * 10, "params": 48 * 8 + 8 + 8 * 4 + 4 + 4 * 10 + 10}
    p = save_arch(arch, tmp_path / "a" / "arch.json")
    assert [f.name for f in p.parent.iterdir()] == ["arch.json"]  # no temp file left behind
    again = load_arch(p)
    assert again == arch and again.digest == arch.digest and again.costs == arch.costs
    assert load_arch(tmp_path / "a") == arch  # a run directory works too
    assert isinstance(again.build(), nn.Module)


def test_canonical_ignores_costs_and_provenance() -> None:
    a = toy()
    b = a.replace(costs={"macs": 1.0}, provenance={"seed": 3}, method="x")
    assert a == b and a.canonical() == b.canonical() and hash(a) == hash(b)
    assert a != a.replace(spec={"widths": [8, 5]})


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(format="nas-arch/9"), "format"),
    (lambda d: d.update(space="darts-typo"), "unknown space"),
    (lambda d: d["spec"].update(widths=[8, -1]), r"spec.widths\[1\]"),
    (lambda d: d.pop("net"), "net is missing"),
    (lambda d: d["net"].update(num_classes=0), "net.num_classes"),
    (lambda d: d["net"].update(input=[3, 4]), "net.input"),
    (lambda d: d.update(extra=1), "unknown field"),
    (lambda d: d.update(costs={"macs": "many"}), "costs"),
])
def test_malformed_files_name_the_field(tmp_path: Path, mutate: Any, field: str) -> None:
    d = toy().to_dict()
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ArchFileError, match=field) as e:
        load_arch(p)
    assert str(p) in str(e.value)


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text("{nope")
    with pytest.raises(ArchFileError, match="not valid JSON.*line 1"):
        load_arch(p)
    with pytest.raises(ArchFileError, match="does not exist"):
        load_arch(tmp_path / "missing.json")
    with pytest.raises(ArchFileError, match="neither a file nor a built-in"):
        get_arch("resnet-57-typo")
