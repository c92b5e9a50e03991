"""NAT benchmarks (issue 8).

1. Search time of the `tiny` preset on cifar10-mini (target: under 10 minutes on a CPU), with the input
   and output costs of the transformed architecture:

       python packages/nat/benchmarks/bench_nat.py [--preset tiny] [--input-arch darts-v2] [--out runs/bench_nat]

2. `--retrain`: the transformed architecture against its input, each retrained from scratch with one
   shared recipe on several seeds (mean and std of the test accuracy; MACs and params):

       python packages/nat/benchmarks/bench_nat.py --retrain --search-dir runs/bench_nat/search [--seeds 5]
           [--train-preset darts-eval] [-o epochs=600] [--net-C 36 --net-layers 20]

   Without --search-dir it searches first (with --preset). The paper's recipe (DARTS evaluation,
   600 epochs, C 36, 20 cells, on CIFAR-10) is a GPU-days job; on a CPU use a small net and few epochs.
Every number printed is measured here; the device and thread count are in the tables. On a shared
machine the wall time depends on the load: the CPU time (process time, all threads) is printed too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from nas_common.arch import Arch, load_arch
from nas_common.benchmarking import markdown_table
from nas_common.data import get_dataset
from nas_common.device import resolve_device
from nas_common.methods import Task
from nas_common.runs import device_name
from nas_common.search import run_search


def search(args: argparse.Namespace, out: Path) -> tuple[Arch, dict[str, Any], float]:
    ds = get_dataset(args.dataset)
    task = Task(dataset=ds, device=resolve_device(args.device), seed=args.seed)
    overrides = [f"input_arch={args.input_arch}", *args.search_override]
    t0, c0 = time.perf_counter(), time.process_time()
    result, arch = run_search("nat", task, out=out, preset=args.preset, overrides=overrides, overwrite=True,
                              progress=False)
    metrics = {**result.metrics, "cpu_s": time.process_time() - c0}
    return arch, metrics, time.perf_counter() - t0


def search_table(args: argparse.Namespace, arch: Arch, metrics: dict[str, Any], seconds: float) -> str:
    dev = resolve_device(args.device)
    c = arch.costs
    row = [args.preset, args.dataset, args.input_arch, device_name(dev), torch.get_num_threads(),
           f"{seconds / 60:.2f}", f"{metrics['cpu_s'] / 60:.2f}",
           f"{c['input_macs'] / 1e6:.1f}", f"{c['macs'] / 1e6:.1f}",
           f"{c['input_params'] / 1e6:.3f}", f"{c['params'] / 1e6:.3f}",
           f"{metrics.get('input_acc', float('nan')):.3f}", f"{metrics.get('best_acc', float('nan')):.3f}"]
    head = ["preset", "dataset", "input", "device", "threads", "wall min", "CPU min", "MACs in (M)", "MACs out (M)",
            "params in (M)", "params out (M)", "held-out acc in", "held-out acc out"]
    return markdown_table(head, [row]) + "\n\n" + f"transformed: {arch.describe()}"


def retrain(args: argparse.Namespace, found: Arch, out: Path) -> str:
    """Retrain the input and/or the transformed arch on `--seeds` seeds; the table covers every record in
    OUT/records.jsonl made with the same recipe (so the two archs may be trained by separate processes)."""
    from nas_common.train import train_arch

    net = dict(found.net)
    if args.net_C:
        net["C"] = args.net_C
    if args.net_layers:
        net["layers"] = args.net_layers
    spec_in = found.provenance.get("input_spec")
    if spec_in is None:
        raise SystemExit("the arch has no provenance.input_spec: give the --search-dir of a NAT search")
    archs = {"input": Arch("darts", spec_in, net).with_costs(), "NAT": Arch("darts", found.spec, net).with_costs()}
    recipe = (f"{args.train_preset} {' '.join(args.train_override)}".strip() + f"; net C {net['C']}, "
              f"{net['layers']} cells; {args.dataset}")
    ds = get_dataset(args.dataset)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "records.jsonl"
    for name in args.archs.split(","):
        arch = archs[name]
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            res = train_arch(arch, ds, out=out / f"{name}-s{seed}", preset=args.train_preset,
                             overrides=args.train_override, seed=seed, device=args.device, overwrite=True,
                             progress=False)
            rec = {"arch": name, "seed": seed, "test_top1": float(res.metrics["test_top1"]),
                   "seconds": time.perf_counter() - t0, "costs": arch.costs, "recipe": recipe,
                   "digest": arch.digest, "device": device_name(resolve_device(args.device)),
                   "threads": torch.get_num_threads()}
            with open(log, "a") as f:
                f.write(json.dumps(rec) + "\n")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = []
    for name, arch in archs.items():
        mine = [r for r in records if r["arch"] == name and r["recipe"] == recipe and r["digest"] == arch.digest]
        if not mine:
            continue
        accs = [r["test_top1"] for r in mine]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append([f"{args.input_arch} ({name})", f"{arch.costs['macs'] / 1e6:.1f}",
                     f"{arch.costs['params'] / 1e6:.3f}", len(accs), f"{statistics.mean(accs):.4f} ± {std:.4f}",
                     f"{statistics.mean(r['seconds'] for r in mine) / 60:.1f}", mine[0]["device"],
                     mine[0]["threads"]])
    head = ["arch", "MACs (M)", "params (M)", "seeds", "test top-1 mean ± std", "wall min / run", "device",
            "threads"]
    return markdown_table(head, rows) + "\n\n" + f"recipe: {recipe}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--dataset", default="cifar10-mini")
    ap.add_argument("--input-arch", default="darts-v2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="runs/bench_nat")
    ap.add_argument("-s", "--search-override", action="append", default=[], metavar="KEY=VALUE",
                    help="NAT config override for the search (repeatable)")
    ap.add_argument("--retrain", action="store_true", help="retrain the input and the transformed arch")
    ap.add_argument("--search-dir", default=None, help="a finished NAT search to retrain (skips the search)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--archs", default="input,NAT", help="which to retrain: input, NAT or input,NAT")
    ap.add_argument("--train-preset", default="darts-eval")
    ap.add_argument("-o", "--train-override", action="append", default=[], metavar="KEY=VALUE",
                    help="training config override for --retrain (repeatable), e.g. -o epochs=20")
    ap.add_argument("--net-C", type=int, default=0, help="retrain with this C (0: the arch's)")
    ap.add_argument("--net-layers", type=int, default=0, help="retrain with this many cells (0: the arch's)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.search_dir:
        found = load_arch(Path(args.search_dir) / "arch.json")
        args.input_arch = found.provenance.get("input_arch", args.input_arch)
    else:
        found, metrics, seconds = search(args, out / "search")
        print("### NAT search\n")
        print(search_table(args, found, metrics, seconds))
        print()
    if args.retrain:
        print("### Retrained from scratch (shared recipe)\n")
        print(retrain(args, found, out / "retrain"))


if __name__ == "__main__":
    main()
