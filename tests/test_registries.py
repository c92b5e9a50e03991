"""Everything registered is tested by iterating its registry (as timm tests its models): every space
(its standard tests), every op, every built-in architecture; and every method entry point has a
conformance subclass of `SearchMethodTests` in its package's tests."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
import torch

from nas_common.arch import get_arch, list_archs
from nas_common.costs import count_macs, count_params
from nas_common.ops import OPS, create_op
from nas_common.registry import list_methods
from nas_common.spaces import list_spaces
from nas_common.testing import SpaceTests

ROOT = Path(__file__).resolve().parents[1]
# micro sizes per space, so every standard space test builds in a fraction of a second
MICRO_NETS = {
    "darts": {"C": 4, "layers": 3, "auxiliary": False}, "darts-bn": {"C": 4, "layers": 3, "auxiliary": False},
    "bsn-resnet": {"depth": 8, "widths": [4, 8, 8]}, "bsn-cnf": {"layers": 3, "channels": 4, "input": [3, 8, 8]},
    "supnet-m": {"width": 8, "blocks": [1, 1, 1], "stem": 4}, "supnet-mi": {"width": 8, "blocks": [1, 1, 1], "stem": 4},
    "supnet-r": {"width": 4, "blocks": [1, 1, 1, 1], "input": [3, 32, 32]},
}


@pytest.fixture(params=list_spaces())
def space(request: pytest.FixtureRequest) -> str:
    return request.param


class TestEverySpace(SpaceTests):
    net_overrides = MICRO_NETS


@pytest.mark.parametrize("name", OPS.names())
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_keeps_channels_and_divides_the_size(name: str, stride: int) -> None:
    op = create_op(name, 4, stride, affine=True).eval()
    x = torch.randn(2, 4, 7, 8)
    with torch.no_grad():
        y = op(x)
    assert y.shape == (2, 4, -(-7 // stride), -(-8 // stride))


@pytest.mark.parametrize("name", list_archs())
def test_every_builtin_arch_builds_and_carries_true_costs(name: str) -> None:
    arch = get_arch(name)
    if max(arch.net["input"][1:]) > 64 or arch.net.get("C", 0) > 64:
        pytest.skip("an ImageNet-sized or paper-sized network: its counted costs are tested where it is defined")
    model = arch.build()
    for key, counted in (("macs", count_macs(model, tuple(arch.net["input"]))), ("params", count_params(model))):
        if key in arch.costs:
            assert arch.costs[key] == pytest.approx(counted, rel=1e-6), (name, key)


def _conformance_methods() -> set[str]:
    """The `method = "..."` of every SearchMethodTests subclass in the packages' tests (read, not imported)."""
    found = set()
    for f in ROOT.glob("packages/*/tests/test_*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if not (isinstance(node, ast.ClassDef)
                    and any(getattr(b, "id", None) == "SearchMethodTests" for b in node.bases)):
                continue
            for stmt in node.body:
                targets = [stmt.target] if isinstance(stmt, ast.AnnAssign) else getattr(stmt, "targets", [])
                named = any(getattr(t, "id", None) == "method" for t in targets)
                if named and isinstance(stmt.value, ast.Constant):
                    found.add(stmt.value.value)
    return found


def test_every_method_entry_point_has_a_conformance_subclass() -> None:
    declared = set()
    for pyproject in ROOT.glob("packages/*/pyproject.toml"):
        eps = tomllib.loads(pyproject.read_text()).get("project", {}).get("entry-points", {})
        declared |= set(eps.get("nas_common.methods", {}))
    assert declared, "no package declares a method entry point"
    assert declared <= set(list_methods()), f"declared but not installed: {declared - set(list_methods())}"
    missing = declared - _conformance_methods()
    assert not missing, f"methods without a SearchMethodTests subclass in their package's tests: {sorted(missing)}"
