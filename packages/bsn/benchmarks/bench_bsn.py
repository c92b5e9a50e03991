"""BSN benchmarks: the accuracy-cost front, gated-execution speed, distributed-cost overhead, `tiny` search.

    python packages/bsn/benchmarks/bench_bsn.py --part front        # BSN vs scaled ResNets, table + plot
    python packages/bsn/benchmarks/bench_bsn.py --part speed        # forward+backward per execution mode
    python packages/bsn/benchmarks/bench_bsn.py --part distributed  # distributed cost vs a search step
    python packages/bsn/benchmarks/bench_bsn.py --part tiny         # tiny preset, budget 60% of ResNet-20
    python packages/bsn/benchmarks/bench_bsn.py --part all          # speed, distributed, tiny, front

front: at budgets of 40%, 60% and 80% of ResNet-20's MACs on cifar10-mini, BSN searches (`--search-preset`,
default `tiny`, on the paper preset's ResCNF super network) and its derived networks are retrained from
scratch with one shared recipe (`--train-preset`, default nas_common's `tiny`) next to ResNet-20 scaled
to the same MACs by width (every conv width times r, the largest r within the budget) and by depth
(blocks per stage, the largest network within the budget), each for `--seeds` seeds: a table of test
accuracy mean +- std and a plot (`--out`/front.png, rows in front.jsonl). Small runs for checking the
script: `--seeds 1 --search-epochs 1 --train-epochs 1 --n-train 512`.

speed: one forward + backward step (train mode, batch 64) of B-ResNet-20 (or `--speed-net rescnf`) with
every gate on and with half the blocks off, for each execution mode of `BSNNetwork` (dense with
whole-batch BatchNorm = the official code; dense with per-example statistics = what `auto` runs on a
GPU; skip; gather; auto). Target: half the blocks off at least 1.6x faster than all on.

distributed: the time of the distributed cost (batched makespan on k workers of a batch of 64 sampled
patterns) against a whole search step (`SearchStep`, the paper preset's super networks), and the step
with and without a distributed budget. Target: under 5% of a step.

tiny: `nas search bsn --preset tiny` on cifar10-mini under a budget of 60% of ResNet-20's MACs.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bsn_nas import BSNConfig, BSNNetwork, SearchStep, rescnf_graph, resnet_graph
from bsn_nas.costs import cost_table, full_cost, min_connected_cost
from bsn_nas.search import supernet_graph
from nas_common import Arch, Budget, Task, count_macs, count_params, get_arch, get_dataset
from nas_common.benchmarking import markdown_table, median_times_interleaved, sync
from nas_common.spaces.resnet import resnet_spec

CIFAR = {"num_classes": 10, "input": [3, 32, 32]}


# ---- speed of gated execution ---------------------------------------------------------------------

def _step(net: BSNNetwork, x: torch.Tensor, y: torch.Tensor, active: torch.Tensor) -> tuple[float, float]:
    """Wall and process-CPU seconds of one forward + backward step."""
    sync(x.device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = net(x, active=active)
    torch.nn.functional.cross_entropy(out, y).backward()
    net.zero_grad(set_to_none=True)
    sync(x.device)
    return time.perf_counter() - t0, time.process_time() - c0


def speed(net_name: str, batch: int, reps: int, device: str) -> None:
    """Round-robin over (gates, mode) so that a busy machine slows every cell alike; the best round."""
    torch.manual_seed(0)
    if net_name == "rescnf":
        g = rescnf_graph({"blocks": 3, "widths": [16, 32, 64], "shift": "slr", **CIFAR})
    else:
        g = resnet_graph({"depth": 20, "widths": [16, 32, 64], **CIFAR})
    table = cost_table(g)
    dev = torch.device(device)
    x = torch.randn(batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    names = g.gate_names
    blocks = [i for i, n in enumerate(names) if n.endswith("_block")]
    all_on = torch.ones(batch, g.num_gates, dtype=torch.bool)
    half_blocks = all_on.clone()
    half_blocks[:, blocks[1::2]] = False  # every second block off for the whole batch, skips on
    gen = torch.Generator().manual_seed(0)
    per_example = all_on.clone()
    per_example[:, blocks] = torch.rand(batch, len(blocks), generator=gen) >= 0.5  # each block off w.p. 1/2
    scen = {"all gates on": all_on, "half the blocks off (whole batch)": half_blocks,
            "each block off w.p. 1/2 (per example)": per_example}
    modes = {"dense, batch BN (official)": ("dense", "batch"), "dense": ("dense", "active"),
             "skip": ("skip", "active"), "gather": ("gather", "active"), "auto": ("auto", "active")}
    nets = {m: BSNNetwork(g, mode=mode, bn_stats=bn).to(dev).train() for m, (mode, bn) in modes.items()}
    first = next(iter(nets.values()))
    for n in nets.values():
        n.load_state_dict(first.state_dict())
    actives = {k: g.active(v).to(dev) for k, v in scen.items()}
    wall: dict[tuple[str, str], list[float]] = {(k, m): [] for k in scen for m in modes}
    cpu: dict[tuple[str, str], list[float]] = {(k, m): [] for k in scen for m in modes}
    for rep in range(reps + 1):
        for k in scen:
            for m in modes:
                w, c = _step(nets[m], x, y, actives[k])
                if rep > 0:  # the first round warms up
                    wall[(k, m)].append(w)
                    cpu[(k, m)].append(c)
    best = {key: min(v) for key, v in wall.items()}  # the least-disturbed round: robust on a shared machine
    cbest = {key: min(v) for key, v in cpu.items()}
    base, cbase = best[("all gates on", "auto")], cbest[("all gates on", "auto")]
    print(f"\n### {g.space} forward+backward step, batch {batch}, {device} ({torch.get_num_threads()} threads), "
          f"best of {reps} round-robin rounds\n")
    rows = []
    for k in scen:
        frac = float(table.cost("macs", g.active(scen[k])).mean()) / full_cost(g, "macs")
        rows.append([k, f"{frac:.0%}", *[f"{best[(k, m)] * 1e3:.0f}" for m in modes],
                     f"{base / best[(k, 'auto')]:.2f}x", f"{cbase / cbest[(k, 'auto')]:.2f}x"])
    print(markdown_table(["gates", "active MACs", *[f"{m} ms" for m in modes], "all on / auto (wall)",
                          "all on / auto (CPU time)"], rows))
    half = base / best[("half the blocks off (whole batch)", "auto")]
    print(f"\nhalf the blocks off, auto vs all on: {half:.2f}x (target >= 1.6x: {'met' if half >= 1.6 else 'NOT met'})")


# ---- distributed-cost overhead ------------------------------------------------------------------

def _distributed_row(supernet: str, ds: Any, x: torch.Tensor, y: torch.Tensor, k: int, iters: int,
                     dev: torch.device) -> list[Any]:
    task = Task(dataset=ds, device=dev, budget=Budget(macs=1e12))
    config = BSNConfig(supernet=supernet, batch_size=x.shape[0])
    floor = min_connected_cost(supernet_graph(task, config), "distributed")  # the budget binds: penalty on
    torch.manual_seed(0)
    plain = SearchStep.build(task, config)
    torch.manual_seed(0)
    dist_task = Task(dataset=ds, device=dev, budget=Budget(limits={"macs": 1e12, f"distributed:{k}": floor}))
    with_dist = SearchStep.build(dist_task, config)
    g, table = with_dist.graph, with_dist.table
    gates = torch.bernoulli(torch.sigmoid(with_dist.logits.detach()).expand(x.shape[0], -1))
    active = g.active(gates)
    t_cost, t_active, t_plain, t_dist = median_times_interleaved(
        [lambda: table.cost("distributed", active, k), lambda: g.active(gates), lambda: plain(x, y),
         lambda: with_dist(x, y)], dev, warmup=1, iters=iters)  # (steps without an accumulator)
    return [g.space, g.num_gates, table.schedule.bound(k), f"{t_cost * 1e3:.2f}", f"{t_active * 1e3:.2f}",
            f"{t_plain * 1e3:.0f}", f"{t_dist * 1e3:.0f}", f"{t_cost / t_plain:.2%}",
            f"{(t_dist - t_plain) / t_plain:+.1%}"]


def distributed(batch: int, k: int, iters: int, device: str) -> None:
    """The batched makespan of the sampled patterns against one whole search step."""
    dev = torch.device(device)
    ds = get_dataset("cifar10-mini")
    x = (ds.train.x[:batch].float() / 255.0).to(dev)
    y = ds.train.y[:batch].to(dev)
    rows = [_distributed_row(supernet, ds, x, y, k, iters, dev) for supernet in ("rescnf", "cnf")]
    print(f"\n### distributed cost on {k} workers, {batch} sampled patterns, {device} "
          f"({torch.get_num_threads()} threads), medians of {iters}\n")
    print(markdown_table(["super network", "gates", "schedule rounds", "makespan ms", "connectivity ms",
                          "step ms (no distributed budget)", "step ms (distributed budget)",
                          "makespan / step", "step difference"], rows))
    print("\ntarget: makespan / step under 5% (the step difference is noisier: two whole steps)")


# ---- the tiny preset --------------------------------------------------------------------------------

def tiny(budget_frac: float, out: str | None, device: str, seed: int) -> None:
    from nas_common.search import run_search

    r20 = count_macs(get_arch("resnet20").build(), (3, 32, 32))
    budget = budget_frac * r20
    task = Task(dataset=get_dataset("cifar10-mini"), device=torch.device(device), seed=seed,
                budget=Budget(macs=budget))
    out_dir = Path(out) if out else Path(tempfile.mkdtemp(prefix="bench_bsn_")) / "run"
    t0, c0 = time.time(), time.process_time()
    result, arch = run_search("bsn", task, out=out_dir, preset="tiny", overwrite=True, progress=False)
    wall, cpu = time.time() - t0, time.process_time() - c0
    m = result.metrics
    print(f"\n### `tiny` preset, cifar10-mini, budget {budget_frac:.0%} of ResNet-20's MACs "
          f"({budget / 1e6:.2f}M), {device}, seed {seed}\n")
    print(markdown_table(
        ["search wall time", "CPU time (all threads)", "derived MACs", "paper FLOPs", "within budget", "params",
         "modules kept", "val acc", "test acc"],
        [[f"{wall / 60:.1f} min", f"{cpu / 60:.1f} min",
          f"{arch.costs['macs'] / 1e6:.2f}M ({arch.costs['macs'] / r20:.0%} of R-20)",
          f"{arch.costs['bsn-paper'] / 1e6:.2f}M", "yes" if arch.costs["macs"] <= budget else "NO",
          f"{arch.costs['params'] / 1e6:.3f}M", f"{m['modules_kept']}/{m['modules_total']}",
          f"{m.get('val_acc', float('nan')):.3f}", f"{m['test_acc']:.3f}"]]))
    print(f"\nderived: {arch.describe()}; keep = {arch.spec['keep']}; run dir {out_dir}")


# ---- the accuracy-cost front ------------------------------------------------------------------------

def _resnet_arch(spec: dict[str, Any]) -> Arch:
    return Arch("resnet", spec, dict(CIFAR)).with_costs()


def resnet_by_width(budget: float) -> Arch:
    """ResNet-20 with every width (stem and convs) times r, for the largest r whose MACs fit the budget."""
    base = resnet_spec(20)

    def scaled(r: float) -> dict[str, Any]:
        w = lambda c: max(1, round(c * r))  # noqa: E731
        widths = [[[w(c) for c in blk] for blk in st] for st in base["widths"]]
        return {**base, "stem": w(base["stem"]), "widths": widths}

    lo, hi = 0.05, 1.0
    for _ in range(30):  # bisection on r (MACs grow with r)
        mid = (lo + hi) / 2
        if _resnet_arch(scaled(mid)).costs["macs"] <= budget:
            lo = mid
        else:
            hi = mid
    return _resnet_arch(scaled(lo))


def resnet_by_depth(budget: float) -> Arch:
    """ResNet-20 with 1-3 blocks per stage: the largest network within the budget (ties: the shallower)."""
    base = resnet_spec(20)
    best = None
    for d in [(a, b, c) for a in (1, 2, 3) for b in (1, 2, 3) for c in (1, 2, 3)]:
        arch = _resnet_arch({**base, "depths": list(d), "widths": [st[:n] for st, n in zip(base["widths"], d,
                                                                                             strict=True)]})
        macs = arch.costs["macs"]
        if macs <= budget and (best is None or macs > best.costs["macs"]):
            best = arch
    if best is None:
        raise SystemExit(f"no ResNet of 1-3 blocks per stage fits {budget / 1e6:.2f}M MACs")
    return best


def front(fracs: list[float], seeds: list[int], search_preset: str, search_epochs: int | None,
          train_preset: str, train_epochs: int | None, n_train: int | None, device: str, out: Path) -> None:
    from nas_common.search import run_search
    from nas_common.train import train_arch

    out.mkdir(parents=True, exist_ok=True)
    ds = get_dataset("cifar10-mini")
    if n_train:
        ds = ds.subset(n_train, None)
    dev = torch.device(device)
    r20 = count_macs(get_arch("resnet20").build(), (3, 32, 32))
    search_over = {"epochs": search_epochs} if search_epochs else {}
    if search_epochs and search_preset == "tiny":
        search_over["lr_milestones"] = [max(0, search_epochs - 2)]
    if n_train and search_preset == "tiny":
        search_over["val_size"] = max(64, n_train // 8)
    train_over = {"epochs": train_epochs} if train_epochs else {}
    rows: list[dict[str, Any]] = []
    log = out / "front.jsonl"
    log.write_text("")
    t_start = time.time()
    for frac in fracs:
        budget = frac * r20
        baselines = {"ResNet-20 by width": resnet_by_width(budget), "ResNet-20 by depth": resnet_by_depth(budget)}
        for seed in seeds:
            task = Task(dataset=ds, device=dev, seed=seed, budget=Budget(macs=budget))
            result, arch = run_search("bsn", task, out=out / f"search-{frac:.2f}-s{seed}", preset=search_preset,
                                      overrides=search_over, overwrite=True, progress=False)
            jobs = {"BSN (ResCNF), retrained": arch, **baselines}
            for name, a in jobs.items():
                res = train_arch(a, ds, out=out / f"train-{name.split()[0].lower()}-{frac:.2f}-s{seed}"
                                 f"{'-w' if 'width' in name else '-d' if 'depth' in name else ''}",
                                 preset=train_preset, overrides=train_over, seed=seed, device=dev, overwrite=True,
                                 progress=False)
                row = {"method": name, "budget_frac": frac, "budget": budget, "seed": seed,
                       "macs": a.costs["macs"], "params": a.costs.get("params", float(count_params(a.build()))),
                       "within_budget": a.costs["macs"] <= budget, "test_acc": res.metrics["test_top1"] / 100.0,
                       "describe": a.describe()}
                if name.startswith("BSN"):
                    row["inherited_test_acc"] = result.metrics["test_acc"]
                rows.append(row)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"  {frac:.0%} seed {seed} {name}: {a.costs['macs'] / 1e6:.2f}M MACs, "
                      f"test {row['test_acc']:.3f} ({(time.time() - t_start) / 60:.1f} min)", flush=True)

    header = (f"cifar10-mini{f' (first {n_train} training images)' if n_train else ''}, search preset "
              f"`{search_preset}`{f' ({search_epochs} epochs)' if search_epochs else ''}, retrained with "
              f"`{train_preset}`{f' ({train_epochs} epochs)' if train_epochs else ''}, {device}")
    report_front(rows, r20, out, header)
    print(f"\nrows: {log}; plot: {out / 'front.png'}; total {(time.time() - t_start) / 60:.1f} min")



def report_front(rows: list[dict[str, Any]], r20: float, out: Path, header: str) -> None:
    """The front's tables (per budget and network: MACs, within budget, test accuracy mean ± std; BSN
    minus each baseline paired by seed, with a 95% t interval when scipy is installed) and front.png."""
    def ms(xs: list[float]) -> str:
        m = statistics.mean(xs)
        s = statistics.stdev(xs) if len(xs) > 1 else float("nan")
        return f"{100 * m:.2f} ± {100 * s:.2f}" if not math.isnan(s) else f"{100 * m:.2f}"

    table = []
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["budget_frac"], r["method"]), []).append(r)
    for (frac, name), rs in sorted(groups.items()):
        inherited = [r["inherited_test_acc"] for r in rs if "inherited_test_acc" in r]
        table.append([f"{frac:.0%} ({frac * r20 / 1e6:.2f}M)", name,
                      f"{statistics.mean(r['macs'] for r in rs) / 1e6:.2f}M",
                      f"{statistics.mean(r['params'] for r in rs) / 1e6:.3f}M",
                      f"{sum(r['within_budget'] for r in rs)}/{len(rs)}",
                      ms([r["test_acc"] for r in rs]), ms(inherited) if inherited else "-"])
    print(f"\n### accuracy-cost front, {header}\n")
    print(markdown_table(["budget (of ResNet-20's MACs)", "network", "MACs (mean)", "params (mean)", "within budget",
                          "test acc % (mean ± std)", "BSN inherited weights %"], table))
    try:
        from scipy import stats
    except ImportError:
        stats = None
    paired = []
    for frac in sorted({f for f, _ in groups}):
        bsn = {r["seed"]: r["test_acc"] for r in groups.get((frac, "BSN (ResCNF), retrained"), [])}
        for name in ("ResNet-20 by width", "ResNet-20 by depth"):
            base = {r["seed"]: r["test_acc"] for r in groups.get((frac, name), [])}
            seeds = sorted(bsn.keys() & base.keys())
            d = [100 * (bsn[s] - base[s]) for s in seeds]
            if not d:
                continue
            m = statistics.mean(d)
            if stats is not None and len(d) > 1 and statistics.stdev(d) > 0:
                lo, hi = stats.t.interval(0.95, len(d) - 1, loc=m, scale=statistics.stdev(d) / math.sqrt(len(d)))
                ci = f"[{lo:+.2f}, {hi:+.2f}]"
            else:
                ci = "-" if stats is not None else "(pip install scipy)"
            paired.append([f"{frac:.0%}", f"BSN − {name}", len(d), f"{m:+.2f}", ci,
                           f"{sum(x > 0 for x in d)}/{len(d)}"])
    if paired:
        print("\n### BSN minus each baseline, paired by seed (test accuracy points; one test image = "
              f"{100 / 500:.1f} points)\n")
        print(markdown_table(["budget", "difference", "seeds", "mean", "95% t interval", "BSN ahead"], paired))
    _plot(groups, r20, out / "front.png")

def _plot(groups: dict[tuple[float, str], list[dict[str, Any]]], r20: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, marker in (("BSN (ResCNF), retrained", "o"), ("ResNet-20 by width", "s"), ("ResNet-20 by depth", "^")):
        pts = sorted((statistics.mean(r["macs"] for r in rs), [r["test_acc"] for r in rs])
                     for (_, n), rs in groups.items() if n == name)
        if not pts:
            continue
        xs = [p[0] / 1e6 for p in pts]
        ys = [100 * statistics.mean(p[1]) for p in pts]
        es = [100 * statistics.stdev(p[1]) if len(p[1]) > 1 else 0.0 for p in pts]
        ax.errorbar(xs, ys, yerr=es, fmt=f"{marker}-", capsize=3, label=name)
    ax.axvline(r20 / 1e6, color="grey", ls=":", lw=1)
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("cifar10-mini: accuracy vs MACs at 40/60/80% of ResNet-20 (dotted)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["front", "speed", "distributed", "tiny", "all"], default="all")
    ap.add_argument("--speed-net", choices=["resnet", "rescnf"], default="resnet")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--k", type=int, default=2, help="workers of the distributed cost")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget-frac", type=float, default=0.6, help="tiny part: budget as a fraction of ResNet-20")
    ap.add_argument("--budget-fracs", default="0.4,0.6,0.8", help="front part: budgets as fractions of ResNet-20")
    ap.add_argument("--seeds", type=int, default=3, help="front part: seeds 0..N-1")
    ap.add_argument("--seed", type=int, default=0, help="tiny part: the seed")
    ap.add_argument("--search-preset", default="tiny")
    ap.add_argument("--search-epochs", type=int, default=None, help="front part: override the search epochs")
    ap.add_argument("--train-preset", default="tiny", help="front part: the shared retraining recipe (TrainConfig)")
    ap.add_argument("--train-epochs", type=int, default=None, help="front part: override the recipe's epochs")
    ap.add_argument("--n-train", type=int, default=None, help="front part: use the first N training images")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="run directory (tiny) or output folder (front; default: a temp dir)")
    ap.add_argument("--report", default=None, metavar="DIR",
                    help="front part: only print the tables and plot of a finished front (DIR/front.jsonl)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.report:
        log = Path(args.report) / "front.jsonl"
        if not log.is_file():
            raise SystemExit(f"--report {args.report}: no front.jsonl there (run --part front --out DIR first)")
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        r20 = count_macs(get_arch("resnet20").build(), (3, 32, 32))
        report_front(rows, r20, Path(args.report), f"cifar10-mini, rows of {log}")
        return
    if args.part in ("speed", "all"):
        speed(args.speed_net, args.batch, args.reps, args.device)
    if args.part in ("distributed", "all"):
        distributed(args.batch, args.k, args.reps, args.device)
    if args.part in ("tiny", "all"):
        tiny(args.budget_frac, args.out if args.part == "tiny" else None, args.device, args.seed)
    if args.part in ("front", "all"):
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_bsn_front_"))
        front([float(f) for f in args.budget_fracs.split(",")], list(range(args.seeds)), args.search_preset,
              args.search_epochs, args.train_preset, args.train_epochs, args.n_train, args.device, out)


if __name__ == "__main__":
    main()
