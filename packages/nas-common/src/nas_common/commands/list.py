"""`nas list`: installed methods (with versions), spaces, datasets, built-in architectures, ops."""
from __future__ import annotations

import argparse

from ..arch import list_archs
from ..cli import command, emit_json
from ..config import list_presets
from ..data import list_datasets
from ..registry import COSTS, OPS, get_method, list_methods, method_version
from ..spaces import list_spaces


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


@command("list", "list methods, spaces, datasets and built-in architectures", arguments)
def run(args: argparse.Namespace) -> int:
    methods = {}
    for name in list_methods():
        try:
            cls = get_method(name)
            methods[name] = {"version": method_version(name), "class": cls.__name__, "spaces": list(cls.spaces),
                             "budget_kinds": list(cls.budget_kinds), "ranks": cls.ranks(),
                             "presets": list_presets(cls.config_cls),
                             "options": [o.flag for o in cls.cli_options]}
        except Exception as e:  # a broken method package must not break `nas list`
            methods[name] = {"error": f"{type(e).__name__}: {e}"}
    info = {"methods": methods, "spaces": list_spaces(), "datasets": list_datasets(), "archs": list_archs(),
            "ops": OPS.names(), "costs": {n: {"unit": c.unit, "argument": c.arg, "description": c.description}
                                         for n, c in COSTS.items()}}
    if args.json:
        emit_json(info)
        return 0
    print("methods:")
    for name, m in methods.items():
        if "error" in m:
            print(f"  {name:16s} cannot load: {m['error']}")
            continue
        print(f"  {name:16s} {m['version'] or '(not installed from a distribution)'}  spaces: "
              f"{', '.join(m['spaces']) or '-'}  budget: {', '.join(m['budget_kinds']) or 'none'}  "
              f"ranking hook: {'yes' if m['ranks'] else 'no'}  presets: {', '.join(m['presets'])}"
              + (f"  options: {' '.join(m['options'])}" if m["options"] else ""))
    if not methods:
        print("  (none installed: pip install ista-nas tas-nas bsn-nas nat-nas posterior-nas)")
    print(f"spaces:   {', '.join(info['spaces'])}")
    print(f"datasets: {', '.join(info['datasets'])}")
    print(f"archs:    {', '.join(info['archs'])}")
    print(f"ops:      {', '.join(info['ops'])}")
    print("costs (budget keys):")
    for n, c in info["costs"].items():
        key = f"{n}:{c['argument'].split()[-1].upper()}" if c["argument"] else n
        print(f"  {key:16s} {c['unit']}: {c['description']}")
    return 0

