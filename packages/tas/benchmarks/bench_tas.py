"""TAS's cost per search step, and the `tiny` preset end to end.

1. One TAS search step (`tas_nas.search.SearchStep`: a weight step, sampled forward, backward, SGD; an
   architecture step, fresh sample, forward, CE + FLOP loss from the expected MACs, gradients for the
   width/depth logits only, Adam) on ResNet-56 at batch 64, against two plain training steps of the
   unpruned ResNet-56 (the "resnet" space's network) at the same batch. Median of interleaved repeats,
   so that load from other processes hits every row alike. Targets: the search step at most 1.5x two
   plain steps, and at least 2x faster than the official search step.
   `--variable-width` adds a row for the same step computed the way the official code computes it:
   tensors at their real, sampled widths (sliced on the host, so a host sync per conv), the input
   zero-padded by concatenation, one BatchNorm call per candidate, channel-wise interpolation by
   adaptive average pooling, residuals added by copy, depth outputs interpolated and summed. It is the
   test suite's literal reference (`tests/tas_reference.py`, written from the paper's equations), not
   the official code: a stand-in for the official step's cost structure.
2. `--released`: the released searched configurations (`tas_nas.archs`): published MFLOPs, the official
   estimate rule applied to the release, and the counted MACs and parameters of the network built.
3. `--tiny`: the `tiny` preset on cifar10-mini (ResNet-20, half the MACs), wall time (target < 10 min
   on CPU) and process CPU time, and the derived network's MACs against the target and tolerance,
   from the final distributions (`derived from` = final) or a fallback.

    python packages/tas/benchmarks/bench_tas.py [--batch 64] [--repeats 5] [--device cpu|cuda] [--threads N]
        [--mix dense gather] [--variable-width] [--released] [--tiny] [--no-step] [--prune-ratio R]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nas_common import Task, get_arch, get_dataset, resolve_config
from nas_common.benchmarking import markdown_table, median_times_interleaved
from nas_common.device import resolve_device
from nas_common.search import run_search
from tas_nas import TASConfig
from tas_nas.flops import FlopTable, flop_loss
from tas_nas.search import SearchStep, build_search_model

TAU = 2.0


def _task(device: torch.device) -> Task:
    """A CIFAR-shaped task (10 classes, 3x32x32) for building the networks; no data is read from it."""
    return Task(get_dataset("cifar10-mini"), device=device, seed=0)


def step_costs(args: argparse.Namespace, device: torch.device) -> list[list]:
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    xv = torch.randn(args.batch, 3, 32, 32, device=device)
    yv = torch.randint(0, 10, (args.batch,), device=device)
    plain = get_arch("resnet56").build().to(device).train()
    p_opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def plain_steps() -> None:
        for _ in range(2):
            loss = F.cross_entropy(plain(x), y)
            p_opt.zero_grad(set_to_none=True)
            loss.backward()
            p_opt.step()

    task = _task(device)
    fns, names = [plain_steps], ["2 plain steps, unpruned ResNet-56"]
    steps = {}
    for mix in args.mix:
        cfg = resolve_config(TASConfig, preset="paper", overrides={"mix": mix})
        model = build_search_model(cfg, task).to(device).train()
        table = FlopTable(model).to(device)
        step = SearchStep(model, table, cfg, 0.47 * table.max_macs, 0.05 * table.max_macs)
        steps[mix] = step
        fns.append(lambda step=step: step(x, y, xv, yv, TAU))
        names.append(f"**TAS search step ({mix} mix)**")
    if args.variable_width:
        fns.append(_variable_width_step(task, device, x, y, xv, yv))
        names.append("variable-width step (the official code's cost structure; tests/tas_reference.py)")
    times = median_times_interleaved(fns, device, warmup=1, iters=args.repeats)
    return [[n, t * 1e3, t / times[0]] for n, t in zip(names, times, strict=True)]


def _variable_width_step(task: Task, device: torch.device, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor,
                         yv: torch.Tensor):  # noqa: ANN202
    """A search step whose forwards are the literal, variable-width reference (host-synchronising)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tas_reference import reference_forward

    cfg = resolve_config(TASConfig, preset="paper")
    model = build_search_model(cfg, task).to(device).train()
    table = FlopTable(model).to(device)
    target, tol = 0.47 * table.max_macs, 0.05 * table.max_macs
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=1e-3, betas=(0.5, 0.999), weight_decay=1e-3)

    def forward(inp: torch.Tensor, sample: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        idx, p, dw = sample
        picks = idx.tolist()  # the host sync the official code makes (it samples on the CPU)
        dws = [dw[s, : len(c)] for s, c in enumerate(model.depth_choices)]
        return reference_forward(model, inp, picks, p, dws)

    def step() -> None:
        with torch.no_grad():
            sample = model.sample(TAU)
        loss = F.cross_entropy(forward(x, sample), y)
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        w_opt.step()
        ce = F.cross_entropy(forward(xv, model.sample(TAU)), yv)
        with torch.no_grad():
            cur = table(*model.argmax_probs())
        total = ce + 2.0 * flop_loss(table(model.width_probs(), model.depth_probs()), cur, target, tol)
        params = model.arch_parameters()
        for prm, g in zip(params, torch.autograd.grad(total, params), strict=True):
            prm.grad = g
        a_opt.step()

    return step


def released_rows() -> list[list]:
    from nas_common.costs.tables import shapes_macs
    from nas_common.spaces.resnet import resnet_conv_shapes
    from tas_nas.archs import RELEASED, official_estimate_mflops

    rows = []
    for name, r in RELEASED.items():
        arch = get_arch(name)
        macs = shapes_macs(resnet_conv_shapes(arch.spec, arch.net["input"], arch.net["num_classes"]))
        params = sum(p.numel() for p in arch.build().parameters())
        rows.append([name, "-".join(map(str, r.xblocks)), r.published_mflops, official_estimate_mflops(r),
                     macs / 1e6, params / 1e6])
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
    ap.add_argument("--mix", nargs="+", default=["dense", "gather"], choices=["dense", "gather"])
    ap.add_argument("--variable-width", action="store_true",
                    help="also time the literal variable-width step (the official code's cost structure)")
    ap.add_argument("--released", action="store_true", help="also list the released configurations' MACs")
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
        print(f"TAS step cost, ResNet-56, batch {args.batch} (wall clock, median of {args.repeats} interleaved; "
              f"target: search step <= 1.5x two plain steps)\n")
        print(markdown_table(["what", "ms", "x 2 plain steps"], rows))
        print()
    if args.released:
        print("released searched configurations (configs/NeurIPS-2019)\n")
        print(markdown_table(["arch", "depths", "published MFLOPs", "official estimate rule", "counted MMACs",
                              "params (M)"], released_rows()))
        print()
    if args.tiny:
        rows = tiny_run(device, args.prune_ratio)
        print("tiny preset on cifar10-mini (target < 600 s on CPU; MACs within tolerance of the target)\n")
        print(markdown_table(["run", "wall s", "CPU s (all threads)", "base MMACs", "target MMACs", "tolerance MMACs",
                              "derived MMACs", "fraction of base", "within tolerance", "derived from", "depths"], rows))


if __name__ == "__main__":
    main()
