"""Layering: nas_common imports no method package, and no method package imports another."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "nas_common": ROOT / "packages/nas-common/src/nas_common",
    "nat_nas": ROOT / "packages/nat/src/nat_nas",
    "bsn_nas": ROOT / "packages/bsn/src/bsn_nas",
    "tas_nas": ROOT / "packages/tas/src/tas_nas",
    "ista_nas": ROOT / "packages/ista-nas/src/ista_nas",
    "posterior_nas": ROOT / "packages/posterior-nas/src/posterior_nas",
}
METHODS = set(PACKAGES) - {"nas_common"}


def imported_top_levels(pkg_dir: Path, root: Path = ROOT) -> dict[str, set[str]]:
    """Top-level module names each file of `pkg_dir` imports (absolute imports only)."""
    out: dict[str, set[str]] = {}
    for f in pkg_dir.rglob("*.py"):
        tree = ast.parse(f.read_text(), filename=str(f))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        out[str(f.relative_to(root))] = names
    return out


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_package_imports_respect_layering(pkg: str) -> None:
    forbidden = METHODS - {pkg}
    bad = {f: sorted(n & forbidden) for f, n in imported_top_levels(PACKAGES[pkg]).items() if n & forbidden}
    assert not bad, f"{pkg} imports other method packages: {bad}"


def test_the_walker_sees_imports(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("import ista_nas.search\nfrom nat_nas import x\nfrom . import y\n")
    assert imported_top_levels(tmp_path, root=tmp_path)["m.py"] == {"ista_nas", "nat_nas"}
