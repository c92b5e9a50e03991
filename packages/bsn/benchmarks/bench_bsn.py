"""BSN benchmarks: the speed of gated execution, and the `tiny` preset under a MACs budget.

    python packages/bsn/benchmarks/bench_bsn.py                 # both parts
    python packages/bsn/benchmarks/bench_bsn.py --part speed    # forward+backward steps only
    python packages/bsn/benchmarks/bench_bsn.py --part tiny     # tiny preset, budget 60% of ResNet-20's MACs

Part 1 times one forward + backward step of B-ResNet (train mode, batch 64) with every gate on and with
half of the conv blocks off, for each execution mode of `BSNNetwork` (dense = the official code:
every module runs and is multiplied by its gate; skip; gather; auto). The target: with half the blocks
off, at least 1.6x faster than all on. Part 2 runs `nas search bsn --preset tiny` on cifar10-mini with
a budget of 60% of ResNet-20's MACs and checks its time (< 10 min) and that the derived network is
within the budget. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bsn_nas import BSNNetwork, resnet_graph
from bsn_nas.costs import cost_table, full_cost


def _step(net: BSNNetwork, x: torch.Tensor, y: torch.Tensor, active: torch.Tensor) -> tuple[float, float]:
    """Wall and process-CPU seconds of one forward + backward step."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = net(x, active=active)
    torch.nn.functional.cross_entropy(out, y).backward()
    net.zero_grad(set_to_none=True)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def speed(depth: int, batch: int, reps: int, device: str) -> None:
    """Round-robin over (gates, mode) so that a busy machine slows every cell alike; medians."""
    torch.manual_seed(0)
    g = resnet_graph({"depth": depth, "widths": [16, 32, 64], "num_classes": 10, "input": [3, 32, 32]})
    table = cost_table(g)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
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
    modes = ("dense", "skip", "gather", "auto")
    nets = {m: BSNNetwork(g, mode=m).to(device).train() for m in modes}
    for m in modes[1:]:
        nets[m].load_state_dict(nets["dense"].state_dict())
    actives = {k: g.active(v) for k, v in scen.items()}
    wall: dict[tuple[str, str], list[float]] = {(k, m): [] for k in scen for m in modes}
    cpu: dict[tuple[str, str], list[float]] = {(k, m): [] for k in scen for m in modes}
    for rep in range(reps + 1):
        for k in scen:
            for m in modes:
                w, c = _step(nets[m], x, y, actives[k])
                if rep > 0:  # the first round warms up
                    wall[(k, m)].append(w)
                    cpu[(k, m)].append(c)
    med = {key: min(v) for key, v in wall.items()}  # the least-disturbed round: robust on a shared machine
    cmed = {key: min(v) for key, v in cpu.items()}
    base, cbase = med[("all gates on", "auto")], cmed[("all gates on", "auto")]
    print(f"\n### B-ResNet-{depth} forward+backward step, batch {batch}, {device} "
          f"({torch.get_num_threads()} threads), best of {reps} round-robin rounds\n")
    print("| gates | active MACs | dense (official) ms | skip ms | gather ms | auto ms | "
          "all on / auto (wall) | all on / auto (CPU time) |")
    print("|---|---|---|---|---|---|---|---|")
    for k in scen:
        frac = float(table.cost("macs", actives[k]).mean()) / full_cost(g, "macs")
        cells = " | ".join(f"{med[(k, m)] * 1e3:.0f}" for m in modes)
        print(f"| {k} | {frac:.0%} | {cells} | {base / med[(k, 'auto')]:.2f}x | {cbase / cmed[(k, 'auto')]:.2f}x |")


def tiny(budget_frac: float, out: str | None, device: str, seed: int) -> None:
    from nas_common import Budget, Task, count_macs, get_arch, get_dataset
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
    print("| search wall time | CPU time (all threads) | derived MACs | within budget | params | modules kept "
          "| val acc | test acc |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {wall / 60:.1f} min | {cpu / 60:.1f} min | "
          f"{arch.costs['macs'] / 1e6:.2f}M ({arch.costs['macs'] / r20:.0%} of R-20) | "
          f"{'yes' if arch.costs['macs'] <= budget else 'NO'} | {arch.costs['params'] / 1e6:.3f}M | "
          f"{m['modules_kept']}/{m['modules_total']} | {m.get('val_acc', float('nan')):.3f} | {m['test_acc']:.3f} |")
    print(f"\nderived: {arch.describe()}; keep = {arch.spec['keep']}; run dir {out_dir}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["speed", "tiny", "all"], default="all")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget-frac", type=float, default=0.6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads for the speed part (0: torch's default)")
    ap.add_argument("--out", default=None, help="run directory of the tiny search (default: a temp dir)")
    args = ap.parse_args()
    if args.part in ("speed", "all"):
        if args.threads:
            torch.set_num_threads(args.threads)
        speed(args.depth, args.batch, args.reps, args.device)
    if args.part in ("tiny", "all"):
        tiny(args.budget_frac, args.out, args.device, args.seed)


if __name__ == "__main__":
    main()
