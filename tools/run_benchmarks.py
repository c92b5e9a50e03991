"""Run the micro-benchmarks of every installed package (packages/<name>/benchmarks/bench_*.py) and print
their tables; a package that is not installed is reported as skipped, not failed.

    python tools/run_benchmarks.py [NAME ...]      # e.g. costs data ista (a bench_<NAME>.py, any package)
"""
from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    failed, skipped = [], []
    for pkg in sorted((ROOT / "packages").iterdir()):
        scripts = sorted((pkg / "benchmarks").glob("bench_*.py"))
        if argv:
            scripts = [s for s in scripts if s.stem.removeprefix("bench_") in argv or s.stem in argv]
        if not scripts:
            continue
        dist = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]["name"]
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            skipped.append(f"{dist} (not installed: {', '.join(s.stem for s in scripts)})")
            continue
        for script in scripts:
            print(f"\n## {dist}: {script.stem}\n", flush=True)
            if subprocess.run([sys.executable, str(script)], cwd=ROOT).returncode != 0:
                failed.append(f"{dist}/{script.stem}")
    if skipped:
        print(f"\nskipped: {'; '.join(skipped)}")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
