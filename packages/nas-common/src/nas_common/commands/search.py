"""`nas search METHOD`: run a method's search and write the found architecture (arch.json)."""
from __future__ import annotations

import argparse
import json

from ..cli import add_common_run_args, command
from ..data import get_dataset
from ..device import resolve_device
from ..methods import Budget, Task
from ..search import run_search


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", help="a method name (see `nas list`)")
    add_common_run_args(p)
    p.add_argument("--preset", default="paper", help="config preset: paper (default) or tiny")
    p.add_argument("--config", default=None, help="a TOML file of config values (applied after the preset)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. -o epochs=10 (repeatable)")
    p.add_argument("--out", required=True, help="the run directory to write")
    p.add_argument("--budget-macs", type=float, default=None, help="maximum multiply-accumulates (FLOPs), e.g. 40e6")
    p.add_argument("--budget-params", type=float, default=None, help="maximum parameter count, e.g. 1e6")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    # method-specific shortcuts, passed through as config overrides (a method without the key refuses it)
    p.add_argument("--input-arch", default=None, metavar="ARCH",
                   help="the architecture to transform (NAT): a genotype name or an arch.json; = -o input_arch=ARCH")
    p.add_argument("--policy", default=None, metavar="RUN_DIR",
                   help="reuse the trained policy of an earlier run (NAT); = -o policy=RUN_DIR")
    p.add_argument("--budget-distributed", default=None, metavar="K:VALUE",
                   help="distributed-cost budget: at most VALUE steps on K workers (BSN); "
                        "= -o distributed_k=K -o budget_distributed=VALUE")
    p.add_argument("--prune-ratio", default=None, metavar="R",
                   help="keep this fraction of the base network's MACs (TAS; without --budget-macs); "
                        "= -o prune_ratio=R")


@command("search", "search an architecture with a method", arguments)
def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    budget = Budget(macs=args.budget_macs, params=args.budget_params)
    ds = get_dataset(args.dataset, data_dir=args.data_dir, download=args.download)
    task = Task(dataset=ds, device=device, seed=args.seed, budget=budget)
    overrides = list(args.override)
    if args.input_arch is not None:
        overrides.append(f"input_arch={args.input_arch}")
    if args.policy is not None:
        overrides.append(f"policy={args.policy}")
    if args.budget_distributed is not None:
        k, sep, value = args.budget_distributed.partition(":")
        if not sep or not k.strip().isdigit():
            from ..errors import ConfigError

            raise ConfigError(f"--budget-distributed {args.budget_distributed!r} must be K:VALUE, e.g. 2:6 "
                              f"(at most 6 steps on 2 workers)")
        overrides += [f"distributed_k={k.strip()}", f"budget_distributed={value.strip()}"]
    if args.prune_ratio is not None:
        overrides.append(f"prune_ratio={args.prune_ratio}")
    if not args.json:
        from ..runs import device_name, package_versions

        v = package_versions()
        print(f"nas search {args.method}: dataset {ds.name}, device {device} ({device_name(device)}), "
              f"seed {args.seed}, torch {v.get('torch')}, out {args.out}")
    result, arch = run_search(args.method, task, out=args.out, preset=args.preset, config_file=args.config,
                              overrides=overrides, resume=args.resume, overwrite=args.overwrite)
    over = budget.violations(arch.costs)
    if args.json:
        print(json.dumps({"arch": arch.to_dict(), "metrics": result.metrics, "over_budget": over}))
    else:
        print(f"found: {arch.describe()}")
        print(f"  MACs {arch.costs['macs'] / 1e6:.2f}M  params {arch.costs['params'] / 1e6:.3f}M  "
              f"search {result.metrics.get('search_time_s', 0):.1f}s")
        print(f"  written: {args.out}/arch.json (retrain with `nas train {args.out}/arch.json --out ...`)")
        if over:
            print(f"  WARNING: over budget: {'; '.join(over)}")
    return 1 if over else 0
