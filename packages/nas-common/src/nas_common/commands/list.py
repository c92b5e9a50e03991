"""`nas list`: installed methods (with versions), spaces, datasets, built-in architectures, ops."""
from __future__ import annotations

import argparse
import json

from ..arch import list_archs
from ..cli import command
from ..data import list_datasets
from ..registry import OPS, get_method, list_methods, method_version
from ..spaces import list_spaces


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


@command("list", "list methods, spaces, datasets and built-in architectures", arguments)
def run(args: argparse.Namespace) -> int:
    methods = {}
    for name in list_methods():
        try:
            cls = get_method(name)
            methods[name] = {"version": method_version(name), "class": cls.__name__,
                             "presets": sorted(getattr(cls.config_cls, "PRESETS", {}))}
        except Exception as e:  # a broken method package must not break `nas list`
            methods[name] = {"error": f"{type(e).__name__}: {e}"}
    info = {"methods": methods, "spaces": list_spaces(), "datasets": list_datasets(), "archs": list_archs(),
            "ops": OPS.names()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("methods:")
    for name, m in methods.items():
        desc = m.get("error") or f"{m['class']} {m['version'] or ''} presets: {', '.join(m['presets'])}"
        print(f"  {name:16s} {desc}")
    if not methods:
        print("  (none installed: pip install ista-nas tas-nas bsn-nas nat-nas posterior-nas)")
    print(f"spaces:   {', '.join(info['spaces'])}")
    print(f"datasets: {', '.join(info['datasets'])}")
    print(f"archs:    {', '.join(info['archs'])}")
    print(f"ops:      {', '.join(info['ops'])}")
    return 0

