"""Run every micro-benchmark of tools/bench (the bench_*.py modules, found by name) and print its table.

    python -m tools.bench.micro [NAME ...]        # e.g. python -m tools.bench.micro costs data
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    names = argv if argv is not None else sys.argv[1:]
    here = Path(__file__).parent
    mods = sorted(p.stem for p in here.glob("bench_*.py"))
    if names:
        mods = [m for m in mods if m.removeprefix("bench_") in names or m in names]
    failed = []
    for m in mods:
        print(f"\n## {m}\n", flush=True)
        r = subprocess.run([sys.executable, "-m", f"tools.bench.{m}"], cwd=here.parents[1])
        if r.returncode != 0:
            failed.append(m)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
