"""NAT benchmarks: the learned policy against the paper's baselines, on one supernet.

1. The ablation (default): per seed, a NAT search (`--preset`, GCN policy) trains the supernet and the
   policy; on that search's supernet the paper's baselines transform the same input with the same
   number of samples: `random` (random transforms, the paper's random search), `max-gcn` (the GCN's most
   probable transform, one candidate) and `lstm` (an LSTM policy trained in its own search, whose
   supernet is bit for bit the GCN search's, asserted on the CPU: the w steps never read the policy).
   Each method's best sampled transform (the input itself excluded) is scored under the shared weights
   on the held-out split the search selects on and on the test split, which no search has seen;
   transformed cells never cost more than the input (asserted on the built networks). NAT and random
   draw their candidates with the same Gumbel noise (the search's inference stream, per seed), so where
   the policy has not moved from uniform they coincide: the paired difference is what the policy learnt.

       python packages/nat/benchmarks/bench_nat.py [--seeds 5 | 5:10 | 0,3] [--jobs 2] [--preset tiny]
           [--input-arch darts-v2] [--methods nat,random,max-gcn,lstm] [--out runs/bench_nat] [--resume]
           [-s KEY=VALUE ...]

   `--jobs K` runs K seeds at once on the CPU (spawned workers, each with 1/K of the threads); each seed
   is the same computation as in one process, so only the times change.

   `--resume` reuses the rows of OUT/records.jsonl made with the same method, seed, preset, overrides
   and data (their run directories still there), so a killed ablation goes on where it stopped.

   Tables: per method, mean ± std over seeds (and the seed count) of those accuracies, the costs and
   the search time; the learned policy minus random, paired by seed; the first seed's search log
   (the supernet's accuracy against chance, the policy's keep probability and how far it moved).
   The NAT search's wall time is checked against `--limit-min` (10 minutes).

2. `--costs`: the official code's published NAT outputs (registered by `nat_nas.archs`) against
   their inputs, MACs and params counted on DARTS' CIFAR-10 network, in nas_common's default layout
   and in DARTS' own (`net.prune_dead=false`).

3. `--retrain --search-dir DIR`: the transformed architecture of a finished search against its input,
   each retrained from scratch with one shared recipe on several seeds (test accuracy mean ± std):

       python packages/nat/benchmarks/bench_nat.py --retrain --search-dir runs/bench_nat/s0/nat [--seeds 5]
           [--train-preset darts-eval] [-o epochs=600] [--net-C 36 --net-layers 20]

Every number printed is measured here; the device and thread count are in the tables. On a shared
machine the wall time depends on the load: the CPU time (process time, all threads) is printed too.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from nas_common.arch import Arch, load_arch
from nas_common.benchmarking import markdown_table
from nas_common.data import get_dataset
from nas_common.device import resolve_device
from nas_common.io import append_line
from nas_common.methods import Task
from nas_common.runs import Run, device_name
from nas_common.search import run_search
from nat_nas import NATSearch
from nat_nas.search import log_line

METHODS = ("nat", "random", "max-gcn", "lstm")
#: per method: the overrides of its run, given the NAT search's directory (None: it is that search)
RUNS: dict[str, Any] = {
    "nat": None,
    "random": lambda nat_dir: {"policy": str(nat_dir), "policy_type": "random"},
    "max-gcn": lambda nat_dir: {"policy": str(nat_dir), "inference": "greedy"},
    "lstm": lambda nat_dir: {"policy_type": "lstm"},
}


def mean_std(xs: list[float]) -> str:
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.4f} ± {std:.4f}"


def _supernet(run_dir: Path) -> dict[str, torch.Tensor]:
    return Run.open(run_dir, method="nat").final_state(keys=("supernet",))["model"]["supernet"]


def _check_same_supernet(a: Path, b: Path, device: torch.device) -> float:
    sa, sb = _supernet(a), _supernet(b)
    diff = max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)
    if diff > 0:
        msg = f"the supernets of {a} and {b} differ (max abs {diff:.3g})"
        if device.type == "cpu":
            raise AssertionError(msg + ": the w steps must not depend on the policy")
        warnings.warn(msg + " (nondeterministic kernels on this device)", stacklevel=2)
    return diff


def _assert_not_costlier(arch: Arch, inp: Arch, what: str) -> None:
    for k in ("macs", "params"):
        if arch.costs[k] > inp.costs[k]:
            raise AssertionError(f"{what} costs more {k} than its input: {arch.costs[k]:.6g} > {inp.costs[k]:.6g}")


def _key(method: str, seed: int, preset: str, overrides: list[str], dataset: str, subset: str) -> tuple:
    return method, seed, preset, tuple(overrides), dataset, subset


def _finished(out: Path) -> dict[tuple, dict[str, Any]]:
    """The rows of `out/records.jsonl` by what made them (method, seed, preset, overrides, data): what a
    resumed ablation reuses instead of searching again."""
    path = out / "records.jsonl"
    if not path.is_file():
        return {}
    found = {}
    for line in filter(str.strip, path.read_text().splitlines()):
        r = json.loads(line)
        key = _key(r["method"], r["seed"], r["preset"], r["overrides"], r.get("dataset", "cifar10-mini"),
                   r.get("subset", ""))
        found[key] = {k: v for k, v in r.items() if k not in ("method", "preset", "overrides", "dataset", "subset",
                                                              "device")}
    return found


def _search_log(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, filter(str.strip, lines)) if "train/loss" in m]


def parse_seeds(text: str) -> list[int]:
    """`--seeds`: N (seeds 0..N-1), A:B (seeds A..B-1) or a comma list."""
    try:
        if ":" in text:
            a, b = text.split(":")
            seeds = list(range(int(a), int(b)))
        elif "," in text:
            seeds = [int(t) for t in text.split(",") if t.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: give N, A:B or a comma list of seeds") from None
    if not seeds:
        raise SystemExit(f"--seeds {text!r} gives no seed")
    return seeds


def _seed_rows(job: tuple[argparse.Namespace, int, list[str], dict[tuple, dict[str, Any]]]
               ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """One seed of the ablation: the NAT search, then each baseline on its supernet. Returns the rows by
    method and the NAT search's log; each row is appended to OUT/records.jsonl as soon as it is made."""
    args, seed, methods, done = job
    device = resolve_device(args.device)
    ds = get_dataset(args.dataset)
    if args.subset:
        ds = ds.subset(*(int(n) for n in args.subset.split(",")))
    out = Path(args.out)
    task = Task(dataset=ds, device=device, seed=seed)
    nat_dir = out / f"s{seed}" / "nat"
    rows: dict[str, dict[str, Any]] = {}
    log_: list[dict[str, Any]] = []
    for method in methods:
        run_dir = out / f"s{seed}" / method
        overrides = [f"input_arch={args.input_arch}", *args.search_override]
        if RUNS[method] is not None:
            overrides += [f"{k}={v}" for k, v in RUNS[method](nat_dir).items()]
        key = _key(method, seed, args.preset, overrides, args.dataset, args.subset)
        if key in done and (run_dir / "arch.json").is_file():
            rows[method] = done[key]
            print(f"seed {seed} {method:8s} reused from {out / 'records.jsonl'} (--resume)", flush=True)
            if method == "nat":
                log_ = _search_log(run_dir)
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        result, arch = run_search("nat", task, out=run_dir, preset=args.preset, overrides=overrides,
                                  overwrite=True, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if method == "lstm":
            _check_same_supernet(nat_dir, run_dir, device)
        st = result.state
        inp = Arch("darts", st["input_spec"], st["net"]).with_costs()
        best = Arch("darts", st["best_transform_spec"], st["net"]).with_costs()
        _assert_not_costlier(best, inp, f"{method} seed {seed}'s best transform")
        _assert_not_costlier(arch, inp, f"{method} seed {seed}'s output")
        test_best, test_input, test_out = NATSearch().score_archs(nat_dir, task, [best, inp, arch])
        heldout_best = result.metrics["search/top1_best_transform"]
        rows[method] = {
            "seed": seed, "samples": len(st["candidates"]), "heldout_best": heldout_best,
            "heldout_input": st["input_acc"], "test_best": test_best, "test_input": test_input,
            "test_output": test_out, "chosen_is_input": st["chosen_is_input"],
            "score_bn": result.config["score_bn"], "macs": best.costs["macs"],
            "params": best.costs["params"], "input_macs": inp.costs["macs"],
            "input_params": inp.costs["params"], "wall_s": wall, "cpu_s": cpu,
            "threads": torch.get_num_threads(),
        }
        print(f"seed {seed} {method:8s} held-out best transform {heldout_best:.4f} "
              f"(input {st['input_acc']:.4f}), test {test_best:.4f} (input {test_input:.4f}), "
              f"{best.costs['macs'] / 1e6:.1f}M MACs, {wall / 60:.2f} min", flush=True)
        if method == "nat":
            log_ = _search_log(run_dir)
        append_line(out / "records.jsonl", json.dumps({"method": method, **rows[method], "preset": args.preset,
                                                       "overrides": overrides, "dataset": args.dataset,
                                                       "subset": args.subset, "device": device_name(device)}))
    return rows, log_


def ablation(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    ds = get_dataset(args.dataset)
    if args.subset:
        ds = ds.subset(*(int(n) for n in args.subset.split(",")))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or "nat" not in methods:
        raise SystemExit(f"--methods: give nat and any of {', '.join(METHODS[1:])} (unknown: {unknown})")
    seeds = parse_seeds(args.seeds)
    if args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: give 1 or more seeds at a time")
    out = Path(args.out)
    done = _finished(out) if args.resume else {}
    out.mkdir(parents=True, exist_ok=True)  # after every refusal
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    first_log: list[dict[str, Any]] = []
    if args.jobs > 1 and device.type == "cpu":
        # seeds in parallel, each worker on its share of the cores; rows come back in seed order
        threads = max(1, torch.get_num_threads() // args.jobs)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=torch.set_num_threads,
                                 initargs=(threads,)) as pool:
            results = list(pool.map(_seed_rows, [(args, seed, methods, done) for seed in seeds]))
    else:
        results = [_seed_rows((args, seed, methods, done)) for seed in seeds]
    for seed_rows, log_ in results:
        for method, row in seed_rows.items():
            rows[method].append(row)
        first_log = first_log or log_
    report(args, rows, first_log, ds.num_classes, device)


def report(args: argparse.Namespace, rows: dict[str, list[dict[str, Any]]], first_log: list[dict[str, Any]],
           num_classes: int, device: torch.device) -> None:
    labels = {"nat": "NAT (GCN, sampled)", "random": "random transforms", "max-gcn": "Maximum-GCN",
              "lstm": "LSTM policy"}
    table = []
    for method, rs in rows.items():
        table.append([labels[method], len(rs), rs[0]["samples"], mean_std([r["heldout_best"] for r in rs]),
                      mean_std([r["test_best"] for r in rs]), f"{statistics.mean(r['macs'] for r in rs) / 1e6:.1f}",
                      f"{statistics.mean(r['params'] for r in rs) / 1e6:.3f}",
                      f"{statistics.mean(r['wall_s'] for r in rs) / 60:.2f}",
                      f"{statistics.mean(r['cpu_s'] for r in rs) / 60:.2f}"])
    nat = rows["nat"]
    table.append([f"{args.input_arch} (input)", len(nat), "-", mean_std([r["heldout_input"] for r in nat]),
                  mean_std([r["test_input"] for r in nat]), f"{nat[0]['input_macs'] / 1e6:.1f}",
                  f"{nat[0]['input_params'] / 1e6:.3f}", "-", "-"])
    per_seed = sorted({r.get("threads", torch.get_num_threads()) for rs in rows.values() for r in rs})
    print(f"\n### Best transform of {args.input_arch}: {args.preset} preset, {args.dataset}, "
          f"{device_name(device)}; {args.jobs} seed(s) at a time, "
          f"{'/'.join(map(str, per_seed))} thread(s) per seed\n")
    print(markdown_table(["method", "seeds", "samples", "held-out acc (selection split)", "test-split acc",
                          "MACs (M)", "params (M)", "wall min", "CPU min"], table))
    print(f"\nAccuracies under the NAT search's shared weights (score_bn={nat[0]['score_bn']}); MACs and params of "
          "the best transform on the derived network; every transform costs no more than the input (asserted).")
    if "random" in rows:
        diff = [a["test_best"] - b["test_best"] for a, b in zip(nat, rows["random"], strict=True)]
        dh = [a["heldout_best"] - b["heldout_best"] for a, b in zip(nat, rows["random"], strict=True)]
        wins = sum(d > 0 for d in diff)
        print(f"\nNAT minus random, paired by seed: test {mean_std(diff)}, held-out {mean_std(dh)}; "
              f"NAT ahead on the test split in {wins} of {len(diff)} seeds.")
    slow = [r for r in nat if r["wall_s"] > args.limit_min * 60]
    print(f"\nNAT search wall time: max {max(r['wall_s'] for r in nat) / 60:.2f} min "
          f"({'over' if slow else 'within'} the {args.limit_min:g}-minute target"
          f"{f' on {len(slow)} seeds' if slow else ''}).")
    if first_log:
        print(f"\n### Search log of seed {nat[0]['seed']}\n")
        for m in first_log:
            print(log_line(m["step"], len(first_log), m, num_classes))


def costs_table() -> None:
    from nat_nas.archs import DARTS_CIFAR_NET, published_costs

    layouts = {"nas_common's layout (unread inputs and dead nodes not built)": DARTS_CIFAR_NET,
               "DARTS' layout (net.prune_dead=false: both inputs preprocessed, every op run)":
                   {**DARTS_CIFAR_NET, "prune_dead": False}}
    for title, net in layouts.items():
        rows = [[r["output"], r["input"], f"{r['input_macs'] / 1e6:.1f}", f"{r['macs'] / 1e6:.1f}",
                 f"{r['input_params'] / 1e6:.3f}", f"{r['params'] / 1e6:.3f}",
                 "no" if r["macs"] > r["input_macs"] or r["params"] > r["input_params"] else "yes"]
                for r in published_costs(net)]
        print(f"\n### {title}\n")
        print(markdown_table(["published output", "input", "MACs in (M)", "MACs out (M)", "params in (M)",
                              "params out (M)", "never costlier"], rows))
    print("\nCounted on DARTS' CIFAR-10 network (C 36, 20 cells, auxiliary head), nas_common's darts space.")


def retrain(args: argparse.Namespace) -> None:
    """Retrain the input and the transformed arch on `--seeds` seeds; the table covers every record in
    OUT/records.jsonl made with the same recipe (so the two archs may be trained by separate processes)."""
    from nas_common.train import train_arch

    found = load_arch(Path(args.search_dir) / "arch.json")
    net = dict(found.net)
    if args.net_C:
        net["C"] = args.net_C
    if args.net_layers:
        net["layers"] = args.net_layers
    spec_in = found.provenance.get("input_spec")
    if spec_in is None:
        raise SystemExit("the arch has no provenance.input_spec: give the --search-dir of a NAT search")
    name_in = found.provenance.get("input_arch", "input")
    archs = {"input": Arch("darts", spec_in, net).with_costs(), "NAT": Arch("darts", found.spec, net).with_costs()}
    recipe = (f"{args.train_preset} {' '.join(args.train_override)}".strip() + f"; net C {net['C']}, "
              f"{net['layers']} cells; {args.dataset}")
    seeds = parse_seeds(args.seeds)  # refused before anything is written
    names = [n.strip() for n in args.archs.split(",") if n.strip()]
    if not names or set(names) - set(archs):
        raise SystemExit(f"--archs {args.archs!r}: give input, NAT or input,NAT")
    ds = get_dataset(args.dataset)
    out = Path(args.out) / "retrain"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "records.jsonl"
    for name in names:
        arch = archs[name]
        for seed in seeds:
            t0 = time.perf_counter()
            res = train_arch(arch, ds, out=out / f"{name}-s{seed}", preset=args.train_preset,
                             overrides=args.train_override, seed=seed, device=args.device, overwrite=True,
                             progress=False)
            rec = {"arch": name, "seed": seed, "test_top1": float(res.metrics["test_top1"]),
                   "seconds": time.perf_counter() - t0, "costs": arch.costs, "recipe": recipe,
                   "digest": arch.digest, "device": device_name(resolve_device(args.device)),
                   "threads": torch.get_num_threads()}
            append_line(log, json.dumps(rec))
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = []
    for name, arch in archs.items():
        mine = [r for r in records if r["arch"] == name and r["recipe"] == recipe and r["digest"] == arch.digest]
        if not mine:
            continue
        accs = [r["test_top1"] for r in mine]
        rows.append([f"{name_in} ({name})", f"{arch.costs['macs'] / 1e6:.1f}", f"{arch.costs['params'] / 1e6:.3f}",
                     len(accs), mean_std(accs), f"{statistics.mean(r['seconds'] for r in mine) / 60:.1f}",
                     mine[0]["device"], mine[0]["threads"]])
    print(markdown_table(["arch", "MACs (M)", "params (M)", "seeds", "test top-1 mean ± std", "wall min / run",
                          "device", "threads"], rows) + "\n\n" + f"recipe: {recipe}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--dataset", default="cifar10-mini")
    ap.add_argument("--input-arch", default="darts-v2")
    ap.add_argument("--seeds", default="5", help="N (seeds 0..N-1), A:B (seeds A..B-1) or a comma list, e.g. 5:10")
    ap.add_argument("--jobs", type=int, default=1,
                    help="seeds searched at once on the CPU, each on its share of the threads (rows as with 1)")
    ap.add_argument("--subset", default="", metavar="TRAIN,TEST",
                    help="use the first TRAIN training and TEST test images (a quick check of the script)")
    ap.add_argument("--methods", default=",".join(METHODS), help="nat and any of random, max-gcn, lstm")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="runs/bench_nat")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the rows of OUT/records.jsonl made with the same settings (a killed ablation goes on)")
    ap.add_argument("--limit-min", type=float, default=10.0, help="target wall time of one NAT search")
    ap.add_argument("-s", "--search-override", action="append", default=[], metavar="KEY=VALUE",
                    help="NAT config override for every search (repeatable), e.g. -s epochs=1")
    ap.add_argument("--costs", action="store_true", help="the published NAT outputs' costs against their inputs")
    ap.add_argument("--retrain", action="store_true", help="retrain the input and the transformed arch")
    ap.add_argument("--search-dir", default=None, help="the finished NAT search to retrain")
    ap.add_argument("--archs", default="input,NAT", help="which to retrain: input, NAT or input,NAT")
    ap.add_argument("--train-preset", default="darts-eval")
    ap.add_argument("-o", "--train-override", action="append", default=[], metavar="KEY=VALUE",
                    help="training config override for --retrain (repeatable), e.g. -o epochs=20")
    ap.add_argument("--net-C", type=int, default=0, help="retrain with this C (0: the arch's)")
    ap.add_argument("--net-layers", type=int, default=0, help="retrain with this many cells (0: the arch's)")
    args = ap.parse_args()
    if args.costs:
        costs_table()
    elif args.retrain:
        if not args.search_dir:
            raise SystemExit("--retrain needs --search-dir (a finished NAT search, e.g. runs/bench_nat/s0/nat)")
        retrain(args)
    else:
        ablation(args)


if __name__ == "__main__":
    main()
