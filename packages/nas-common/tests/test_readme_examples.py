"""Every package README's Python example runs as written: the first ```python block of each
packages/*/README.md, in a fresh interpreter in an empty directory, at a small scale (each dataset
cut to its first images by a prelude, so the `tiny` presets run in seconds to minutes on a CPU).

The examples are discovered, not listed: a README that gains or changes its example is tested as it is.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
READMES = sorted((ROOT / "packages").glob("*/README.md")) if (ROOT / "packages").is_dir() else []
N_TRAIN, N_TEST = 1024, 128  # enough for every method's tiny preset (BSN holds out 500 images)

PRELUDE = f'''
from nas_common.registry import DATASETS as _DATASETS
def _small(factory):
    return lambda *args, **kwargs: factory(*args, **kwargs).subset({N_TRAIN}, {N_TEST})
for _name, _factory in list(_DATASETS._items.items()):
    _DATASETS._items[_name] = _small(_factory)
'''


def first_python_block(readme: Path) -> str | None:
    m = re.search(r"^```python\n(.*?)^```", readme.read_text(), flags=re.S | re.M)
    return m.group(1) if m else None


def test_examples_are_found() -> None:
    if not READMES:
        pytest.skip("not in the repository (an installed wheel)")
    found = {r.parent.name: first_python_block(r) for r in READMES}
    assert found.get("nas-common"), "the nas-common README has no ```python example"
    compile(found["nas-common"], "README.md", "exec")


@pytest.mark.slow
@pytest.mark.parametrize("readme", READMES, ids=[r.parent.name for r in READMES])
def test_readme_example_runs(readme: Path, tmp_path: Path) -> None:
    code = first_python_block(readme)
    if code is None:
        pytest.skip(f"{readme} has no ```python block")
    pkg = readme.parent.name
    if pkg != "nas-common":
        dist = {"nat": "nat_nas", "bsn": "bsn_nas", "tas": "tas_nas"}.get(pkg, pkg.replace("-", "_"))
        pytest.importorskip(dist)
    script = tmp_path / "example.py"
    script.write_text(PRELUDE + "\n" + code)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NAS_PROGRESS": "0"}
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, f"{readme}'s example failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
