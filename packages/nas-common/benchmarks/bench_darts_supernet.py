"""Speed of the shared DARTS supernet: dense (DARTS mixed op) vs sparse mode vs the discrete network.

    python packages/nas-common/benchmarks/bench_darts_supernet.py [--device cpu|cuda] [--C 16] [--layers 8] [--batch 64]

(Defaults: C 16, 8 cells, batch 64 on CUDA; C 8, 5 cells, batch 16 on a CPU, to finish in about a minute.)

Times one training step (forward + backward) and one eval forward of:
- the discrete DARTS-V2 network (`DartsNetwork`, no auxiliary head) with the same C and layers;
- the supernet in sparse mode running DARTS-V2's ops (NAT: one op per chosen input);
- the supernet in sparse mode with 2 weighted (edge, op) entries per node (ISTA-NAS);
- the supernet in dense mode (every op of every edge, softmax weights: the DARTS baseline).
Sparse mode should cost close to the discrete network; dense mode about n_ops times more.
Prints a markdown table (median of --iters steps after --warmup).
"""
from __future__ import annotations

import argparse
import random
from collections.abc import Callable

import torch

from nas_common.benchmarking import markdown_table, median_time
from nas_common.device import resolve_device
from nas_common.ops import PRIMITIVES
from nas_common.runs import device_name
from nas_common.spaces.darts import DARTS_V2, DartsNetwork, DartsSupernet


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None)
    p.add_argument("--C", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads on a CPU (default 1: steady timings on a shared machine)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    big = device.type == "cuda"
    args.C = args.C or (16 if big else 8)
    args.layers = args.layers or (8 if big else 5)
    args.batch = args.batch or (64 if big else 16)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    discrete = DartsNetwork(args.C, 10, args.layers, DARTS_V2, auxiliary=False).to(device)
    supernet = DartsSupernet(args.C, 10, args.layers, PRIMITIVES).to(device)
    ista = DartsSupernet(args.C, 10, args.layers, tuple(p for p in PRIMITIVES if p != "none")).to(device)
    normal, reduce = supernet.genotype_choice(DARTS_V2)
    rng = random.Random(0)

    def ista_choice() -> list:
        return [[(rng.randrange(i + 2), rng.randrange(7), torch.tensor(0.5, device=device, requires_grad=True))
                 for _ in range(2)] for i in range(4)]

    ista_n, ista_r = ista_choice(), ista_choice()
    alpha = torch.zeros(supernet.n_edges, supernet.n_ops, device=device, requires_grad=True)

    cases: list[tuple[str, torch.nn.Module, Callable[[], torch.Tensor]]] = [
        ("discrete DARTS-V2 network", discrete, lambda: discrete(x)),
        ("supernet sparse, DARTS-V2 ops (NAT)", supernet, lambda: supernet.forward_sparse(x, normal, reduce)),
        ("supernet sparse, 2 weighted entries/node (ISTA)", ista, lambda: ista.forward_sparse(x, ista_n, ista_r)),
        ("supernet dense, all ops (DARTS)", supernet,
         lambda: supernet(x, torch.softmax(alpha, -1), torch.softmax(alpha, -1))),
    ]
    rows = []
    base_train = base_eval = None
    for name, model, fwd in cases:
        model.train()

        def step(model: torch.nn.Module = model, fwd: Callable[[], torch.Tensor] = fwd) -> None:
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(fwd(), y).backward()

        t_train = median_time(step, device, args.warmup, args.iters)
        model.eval()

        def infer(fwd: Callable[[], torch.Tensor] = fwd) -> None:
            with torch.no_grad():
                fwd()

        t_eval = median_time(infer, device, args.warmup, args.iters)
        base_train = base_train or t_train
        base_eval = base_eval or t_eval
        rows.append([name, t_train * 1e3, t_train / base_train, t_eval * 1e3, t_eval / base_eval])
    print(f"DARTS supernet speed: C {args.C}, {args.layers} cells, batch {args.batch}x3x{args.size}x{args.size}, "
          f"device {device_name(device)}, torch {torch.__version__}")
    print()
    print(markdown_table(["model", "train step ms", "x discrete", "eval fwd ms", "x discrete"], rows))


if __name__ == "__main__":
    main()
