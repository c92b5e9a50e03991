"""`nas search METHOD`: run a method's search and write the found architecture (arch.json).

    nas search tas --preset tiny --budget-macs 20e6 --out runs/tas
    nas search bsn --preset tiny --budget distributed:2=6 --out runs/bsn
    nas search nat --help          # the common options and NAT's own (--input-arch, --policy)

The method's own flags come from its `cli_options`; nas-common names no method.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..cli import EXIT_OVER_BUDGET, add_common_run_args, add_keep_best_arg, command, emit_json
from ..data import get_dataset
from ..device import resolve_device
from ..errors import NASError
from ..methods import Budget, Task
from ..registry import get_method, list_methods
from ..search import run_search


def _method_in(argv: Sequence[str]) -> str | None:
    """The METHOD of `nas ... search METHOD ...` (the first positional after `search`), if any."""
    argv = list(argv)
    if "search" not in argv:
        return None
    rest = argv[argv.index("search") + 1:]
    return next((a for a in rest if not a.startswith("-")), None)


def arguments(p: argparse.ArgumentParser, argv: Sequence[str] = ()) -> None:
    p.add_argument("method", help="a method name (see `nas list`)")
    add_common_run_args(p)
    p.add_argument("--preset", default="paper", help="config preset: paper (default) or tiny")
    p.add_argument("--config", default=None, help="a TOML file of config values (applied after the preset)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. -o epochs=10 (repeatable)")
    p.add_argument("--out", required=True, help="the run directory to write")
    p.add_argument("--budget-macs", type=float, default=None, help="maximum multiply-accumulates (FLOPs), e.g. 40e6")
    p.add_argument("--budget-params", type=float, default=None, help="maximum parameter count, e.g. 1e6")
    p.add_argument("--budget", action="append", default=[], metavar="COST=VALUE",
                   help="a budget on any registered cost, e.g. distributed:2=6 (at most 6 steps on 2 workers), "
                        "latency:cuda=2e-3, memory=5e7 (repeatable; see `nas list`)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_keep_best_arg(p, "the method's validation metric")
    name = _method_in(argv)
    if name is None or name not in list_methods():
        p.epilog = "each method adds its own options: see `nas search METHOD --help`"
        return
    cls = get_method(name)
    group = p.add_argument_group(f"options of {name}")
    for opt in cls.cli_options:
        group.add_argument(opt.flag, dest=opt.dest, default=None, metavar=opt.metavar, help=opt.help)


@command("search", "search an architecture with a method", arguments)
def run(args: argparse.Namespace) -> int:
    cls = get_method(args.method)
    device = resolve_device(args.device)
    budget = Budget(macs=args.budget_macs, params=args.budget_params, limits=Budget.parse(args.budget).limits)
    ds = get_dataset(args.dataset, data_dir=args.data_dir, download=args.download)
    task = Task(dataset=ds, device=device, seed=args.seed, budget=budget)
    overrides = list(args.override)
    for opt in cls.cli_options:
        value = getattr(args, opt.dest, None)
        if value is not None:
            try:
                overrides += [f"{k}={v}" for k, v in opt.overrides(value).items()]
            except (TypeError, ValueError) as e:
                raise NASError(f"{opt.flag} {value!r}: {e}") from None
    if not args.json:
        from ..runs import device_name, package_versions

        v = package_versions()
        print(f"nas search {args.method}: dataset {ds.name}, device {device} ({device_name(device)}), "
              f"seed {args.seed}, torch {v.get('torch')}, out {args.out}")
    result, arch = run_search(cls, task, out=args.out, preset=args.preset, config_file=args.config,
                              overrides=overrides, resume=args.resume, overwrite=args.overwrite,
                              keep_best=args.keep_best)
    over = budget.violations(arch.costs)
    if args.json:
        emit_json({"arch": arch.to_dict(), "metrics": result.metrics, "over_budget": over})
    else:
        print(f"found: {arch.describe()}")
        extra = "".join(f"  {k} {arch.costs[k]:.4g}" for k in budget.limits if k not in ("macs", "params"))
        print(f"  MACs {arch.costs['macs'] / 1e6:.2f}M  params {arch.costs['params'] / 1e6:.3f}M{extra}  "
              f"search {result.metrics.get('search_time_s', 0):.1f}s")
        if result.model is not None:
            print(f"  written: {args.out}/arch.json and model.pt, the search's trained network "
                  f"(`nas eval {args.out}` evaluates it; retrain with `nas train {args.out}/arch.json --out ...`)")
        else:
            print(f"  written: {args.out}/arch.json (retrain with `nas train {args.out}/arch.json --out ...`)")
        if over:
            print(f"  WARNING: over budget: {'; '.join(over)}")
    return EXIT_OVER_BUDGET if over else 0
