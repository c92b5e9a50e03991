"""TAS's cost per search step, and the `tiny` preset end to end (issue 6).

1. One TAS search step on ResNet-56 at batch 64 (a weight step: sampled forward, backward, SGD; and an
   architecture step: fresh sample, forward, CE + FLOP loss with the expected MACs, gradients for the
   width/depth logits only, Adam) against two plain training steps of the unpruned ResNet-56 (the
   "resnet" space's network) at the same batch. Rows are interleaved and repeated and the best repeat
   is kept, so load from other processes hurts both sides alike. Target: ratio <= 2.0 (the official
   code takes 2.7x).
2. `--tiny`: the `tiny` preset on cifar10-mini (ResNet-20, half the MACs), wall time (target < 10 min
   on CPU) and process CPU time (what the wall time is on an idle machine, times the threads used),
   and the derived network's MACs against the target and tolerance.

    python packages/tas/benchmarks/bench_tas.py [--batch 64] [--repeats 5] [--device cpu] [--threads N]
                                                [--clock wall|cpu]
                                    [--mix dense gather] [--tiny] [--no-step] [--prune-ratio R]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from nas_common import Task, get_arch, get_dataset
from nas_common.benchmarking import markdown_table, sync
from nas_common.device import resolve_device
from nas_common.search import run_search
from tas_nas.flops import FlopTable, flop_loss
from tas_nas.model import SearchResNet, base_spec


def step_costs(args: argparse.Namespace, device: torch.device) -> list[list]:
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    plain = get_arch("resnet56").build().to(device).train()
    p_opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def plain_step() -> None:
        loss = F.cross_entropy(plain(x), y)
        p_opt.zero_grad(set_to_none=True)
        loss.backward()
        p_opt.step()

    searchers = {}
    for mix in args.mix:
        model = SearchResNet(base_spec("resnet56"), 10, (3, 32, 32), mix=mix).to(device).train()
        table = FlopTable(model).to(device)
        w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        a_opt = torch.optim.Adam(model.arch_parameters(), lr=1e-3, betas=(0.5, 0.999), weight_decay=1e-3)
        target, tol = 0.5 * table.max_macs, 0.05 * table.max_macs

        def weight_step(model=model, w_opt=w_opt) -> None:
            with torch.no_grad():
                sample = model.sample(2.0)
            loss = F.cross_entropy(model(x, sample), y)
            w_opt.zero_grad(set_to_none=True)
            loss.backward()
            w_opt.step()

        def arch_step(model=model, table=table, a_opt=a_opt, target=target, tol=tol) -> None:
            ce = F.cross_entropy(model(x, model.sample(2.0)), y)
            with torch.no_grad():
                cur = table(*model.argmax_probs())
            loss = ce + 2.0 * flop_loss(table(model.width_probs(), model.depth_probs()), cur, target, tol)
            params = model.arch_parameters()
            for p, g in zip(params, torch.autograd.grad(loss, params), strict=False):
                p.grad = g
            a_opt.step()

        searchers[mix] = (weight_step, arch_step)

    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def timed(fn, n: int = 1) -> float:
        sync(device)
        t0 = clock()
        for _ in range(n):
            fn()
        sync(device)
        return clock() - t0

    best: dict[str, float] = {}
    for fn in [plain_step, *(f for pair in searchers.values() for f in pair)]:
        fn()  # warm-up
    for _ in range(args.repeats):
        best["plain"] = min(best.get("plain", 1e9), timed(plain_step, 2))
        for mix, (ws, as_) in searchers.items():
            best[f"w-{mix}"] = min(best.get(f"w-{mix}", 1e9), timed(ws))
            best[f"a-{mix}"] = min(best.get(f"a-{mix}", 1e9), timed(as_))
            best[f"s-{mix}"] = min(best.get(f"s-{mix}", 1e9), timed(lambda ws=ws, as_=as_: (ws(), as_())))
    rows = [["2 plain steps, unpruned ResNet-56", best["plain"] * 1e3, 1.0]]
    for mix in searchers:
        rows.append([f"TAS weight step ({mix} mix)", best[f"w-{mix}"] * 1e3, best[f"w-{mix}"] / best["plain"]])
        rows.append([f"TAS arch step ({mix} mix)", best[f"a-{mix}"] * 1e3, best[f"a-{mix}"] / best["plain"]])
        rows.append([f"**TAS search step ({mix} mix)**", best[f"s-{mix}"] * 1e3, best[f"s-{mix}"] / best["plain"]])
    return rows


def tiny_run(device: torch.device, budget_ratio: float | None) -> list[list]:
    task = Task(get_dataset("cifar10-mini"), device=device, seed=0)
    over = {} if budget_ratio is None else {"prune_ratio": budget_ratio}
    with tempfile.TemporaryDirectory() as d:
        t0, c0 = time.perf_counter(), time.process_time()
        result, arch = run_search("tas", task, out=f"{d}/tiny", preset="tiny", overrides=over, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = result.metrics
    return [["tiny (ResNet-20, cifar10-mini)", wall, cpu, m["base_macs"] / 1e6, m["target_macs"] / 1e6,
             m["tolerance_macs"] / 1e6, arch.costs["macs"] / 1e6, arch.costs["macs"] / m["base_macs"],
             m["within_tolerance"], m["derived_from"], "-".join(map(str, arch.spec["depths"]))]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="cpu: process CPU time (robust to other jobs on a shared machine; use with --threads 1)")
    ap.add_argument("--mix", nargs="+", default=["dense", "gather"], choices=["dense", "gather"])
    ap.add_argument("--tiny", action="store_true", help="also run the tiny preset on cifar10-mini")
    ap.add_argument("--no-step", action="store_true", help="skip the step-cost table")
    ap.add_argument("--prune-ratio", type=float, default=None, help="tiny run: target fraction of the MACs")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    if not args.no_step:
        rows = step_costs(args, device)
        print(f"TAS step cost, ResNet-56, batch {args.batch} ({args.clock} clock, best of {args.repeats}; "
              f"target ratio <= 2.0)\n")
        print(markdown_table(["what", "ms", "x 2 plain steps"], rows))
        print()
    if args.tiny:
        rows = tiny_run(device, args.prune_ratio)
        print("tiny preset on cifar10-mini (target < 600 s on CPU; MACs within tolerance of the target)\n")
        print(markdown_table(["run", "wall s", "CPU s (all threads)", "base MMACs", "target MMACs", "tolerance MMACs",
                              "derived MMACs",
                              "fraction of base", "within tolerance", "derived from", "depths"], rows))


if __name__ == "__main__":
    main()
