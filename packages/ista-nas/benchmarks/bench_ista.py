"""ISTA-NAS cost benchmarks: the sparse search step against the dense DARTS supernet and against the
discrete network it selects, and the LASSO recovery of all nodes against cvxpy + Clarabel.

    python packages/ista-nas/benchmarks/bench_ista.py [--device cpu|cuda] [--C 16] [--layers 8] [--batch 64]
    python packages/ista-nas/benchmarks/bench_ista.py --parts lasso          # only the LASSO table
    python packages/ista-nas/benchmarks/bench_ista.py --tiny-search          # also time the `tiny` two-stage search

Defaults are the paper's search setting (8 cells, C 16, batch 64 as in the issue). One *search step*
is what ISTA-NAS does per batch: a b step (forward + backward to b + Adam) on a validation batch and a
weight step (forward + backward + SGD) on a training batch of the sparse supernet (2 ops per node).
It is compared with
  (a) the same step of the dense DARTS supernet of the same space and size (every op on every edge,
      softmax-weighted; an α step and a weight step): time and activation memory;
  (b) two training steps of the discrete network the current selection describes (the DARTS
      evaluation network of that genotype at the same C and layers, no auxiliary head): time.
All three run in channels_last (the library's default; --no-channels-last for NCHW). The ratios
depend on which ops the selection runs (sep_conv_5x5 costs far more than a pooling), so the first
table uses the initial selection of seed 0, and a second one repeats the sparse side for the initial
selections of --selections seeds and for the official run's fixed selection (the one the official
code's sparse step was timed at); forward FLOPs (torch's counter) put the time ratios in context.
Activation memory is the bytes autograd saves for backward during the forward of the weight step
(unique storages; device independent), and on CUDA also the peak allocated memory above the weights.

LASSO: the 8 problems of a search (2 cell types x 4 nodes, m 7, n 14..35, gamma 1e-5) with b drawn at
scales 1e-3, 1 and 10 (b is an unbounded parameter that grows during a search), solved by the exact
homotopy (the search's solver), by FISTA (the previous default: tol 1e-3 gamma, 20k iterations) and,
when cvxpy and clarabel are installed (`pip install cvxpy clarabel`; skipped with a message otherwise),
by cvxpy + Clarabel in this process, one problem per node built as the official code builds it (it
uses MOSEK, which needs a licence). Same top-2 supports as the homotopy, KKT residuals, median times.
Prints markdown tables (median over --iters steps after --warmup).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ista_nas import ISTA_PRIMITIVES, CompressedCode, genotype_from_support
from ista_nas.benchmarking import dense_search_step, sparse_search_step
from ista_nas.lasso import kkt_violation, lasso
from ista_nas.network import search_supernet
from nas_common.benchmarking import markdown_table, median_time, median_times_interleaved, sync
from nas_common.device import resolve_device
from nas_common.runs import device_name
from nas_common.spaces.darts import DartsNetwork, DartsSupernet, spec_to_genotype


def _saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward while fn() runs (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def _forward_flops(fn: Callable[[], torch.Tensor]) -> float:
    """FLOPs torch's formulas count in one forward (convolutions and matmuls: what sets the work)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _cuda_peak(fn: Callable[[], None], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return float(torch.cuda.max_memory_allocated(device) - base)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None)
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (1: steady on a shared machine)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory format for all three networks (the library's default)")
    p.add_argument("--selections", type=int, default=3, help="also time the initial selections of this many seeds")
    p.add_argument("--tiny-search", action="store_true", help="also time the tiny preset's two-stage search")
    p.add_argument("--parts", default="steps,lasso", help="comma-separated: steps (the step tables), lasso")
    p.add_argument("--lasso-scales", default="1e-3,1,10", help="b scales (std per entry) of the LASSO table")
    p.add_argument("--lasso-reps", type=int, default=5, help="timed repeats per LASSO solver (median)")
    p.add_argument("--no-fista", action="store_true", help="leave FISTA out of the LASSO table (it is slow)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if unknown := parts - {"steps", "lasso"}:
        p.error(f"unknown --parts {', '.join(sorted(unknown))}: use steps, lasso")
    if "steps" in parts:
        bench_steps(args, device)
    if "lasso" in parts:
        bench_lasso(device, [float(v) for v in args.lasso_scales.split(",")], args.lasso_reps, not args.no_fista)
    if args.tiny_search:
        bench_tiny_search(device)


def bench_steps(args: argparse.Namespace, device: torch.device) -> None:
    """The search-step tables (see the module docstring)."""
    torch.manual_seed(0)
    C, L, B, S = args.C, args.layers, args.batch, args.size
    x = torch.randn(B, 3, S, S, device=device)
    y = torch.randint(0, 10, (B,), device=device)

    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)

    # ---- the sparse ISTA-NAS search network and its step
    sparse = search_supernet(C, 10, L, 4, 3).to(device, memory_format=fmt)
    w_opt = torch.optim.SGD(sparse.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)

    def selection(seed: int, fixed: tuple | None = None) -> tuple[CompressedCode, list]:
        """The code of a search started with `seed` (its initial b, z and top-2 support), or with the
        support `fixed` (candidate indices, as CompressedCode.support) and that code's b and z."""
        code = CompressedCode(seed=seed).to(device)
        z, _ = code.recover(1e-5)
        code.set_code(z)
        if fixed is not None:
            code.support.copy_(torch.tensor(fixed, device=device))
        return code, code.support.tolist()

    def sparse_step_fn(seed: int, fixed: tuple | None = None
                       ) -> tuple[Callable[[], None], Callable[[], torch.Tensor], list]:
        code, support = selection(seed, fixed)
        return (*sparse_search_step(sparse, code, w_opt, x, y, support), support)

    ista_step, sparse_forward, support = sparse_step_fn(0)

    # ---- the dense DARTS supernet of the same space (7 ops, softmax weights) and its step
    dense = DartsSupernet(C, 10, L, primitives=ISTA_PRIMITIVES).to(device, memory_format=fmt)
    darts_step, dense_forward = dense_search_step(dense, x, y)

    # ---- the discrete network of the current selection: two training steps
    def discrete_fns(support: list) -> tuple[Callable[[], None], Callable[[], torch.Tensor]]:
        spec = genotype_from_support(support)
        discrete = DartsNetwork(C, 10, L, spec_to_genotype(spec), auxiliary=False).to(device, memory_format=fmt)
        discrete.train()
        n_opt = torch.optim.SGD(discrete.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)

        def discrete_forward() -> torch.Tensor:
            return F.cross_entropy(discrete(x), y)

        def two_discrete_steps() -> None:
            for _ in range(2):
                loss = discrete_forward()
                n_opt.zero_grad(set_to_none=True)
                loss.backward()
                n_opt.step()

        return two_discrete_steps, discrete_forward

    two_discrete_steps, discrete_forward = discrete_fns(support)
    sparse.train(), dense.train()
    t_ista, t_darts, t_disc = median_times_interleaved([ista_step, darts_step, two_discrete_steps], device,
                                                args.warmup, args.iters)
    m_ista = _saved_bytes(sparse_forward)
    m_darts = _saved_bytes(dense_forward)
    m_disc = _saved_bytes(discrete_forward)
    f_ista, f_darts = _forward_flops(sparse_forward), _forward_flops(dense_forward)
    rows = [
        ["ISTA-NAS sparse search step (b + w)", f"{t_ista * 1e3:.1f}", f"{m_ista / 2**20:.1f}", "1.00", "1.00"],
        ["DARTS dense supernet step (α + w)", f"{t_darts * 1e3:.1f}", f"{m_darts / 2**20:.1f}",
         f"{t_darts / t_ista:.1f}x", f"{m_darts / m_ista:.1f}x"],
        ["2 training steps of the selected discrete net", f"{t_disc * 1e3:.1f}", f"{m_disc / 2**20:.1f}",
         f"{t_disc / t_ista:.2f}x", f"{m_disc / m_ista:.2f}x"],
    ]
    layout = "channels_last" if args.channels_last else "NCHW"
    print(f"\n### ISTA-NAS search step: {C=} layers={L} batch={B} {S}x{S} {layout} on {device_name(device)}, "
          f"torch {torch.__version__}; selection of seed 0\n")
    print(markdown_table(["step", "time (ms)", "saved activations (MiB)", "time vs ISTA", "memory vs ISTA"], rows))
    print(f"\n(a) dense / sparse: {t_darts / t_ista:.1f}x time (target: at least the forward-FLOP ratio "
          f"{f_darts / f_ista:.1f}x on a CPU, 10x on CUDA), {m_darts / m_ista:.1f}x activation memory (target >= 4x); "
          f"(b) sparse step / two discrete steps: {t_ista / t_disc:.2f}x (target <= 0.8x)")
    if device.type == "cuda":
        p_ista = _cuda_peak(ista_step, device)
        p_darts = _cuda_peak(darts_step, device)
        print(f"CUDA peak memory above the weights: ISTA {p_ista / 2**20:.1f} MiB, DARTS {p_darts / 2**20:.1f} MiB "
              f"({p_darts / max(p_ista, 1):.1f}x)")

    # ---- other selections: the ratios depend on which ops the current selection runs
    srows = []
    labels: list[tuple[str, tuple | None]] = [(f"seed {seed}", None) for seed in range(max(args.selections, 1))]
    labels.append(("official run", OFFICIAL_SELECTION))
    for label, fixed in labels:
        if label == "seed 0":
            step, fwd, sup = ista_step, sparse_forward, support
        else:
            step, fwd, sup = sparse_step_fn(0 if fixed is not None else int(label.split()[1]), fixed)
        disc, _ = discrete_fns(sup)
        t_s, t_d = median_times_interleaved([step, disc], device, args.warmup, args.iters)
        ops = ",".join(ISTA_PRIMITIVES[c % len(ISTA_PRIMITIVES)].replace("_conv", "").replace("_3x3", "3")
                       .replace("_5x5", "5").replace("skip_connect", "skip")
                       for cell in sup for node in cell for c in node)
        srows.append([label, f"{t_s * 1e3:.1f}", f"{t_darts / t_s:.1f}x", f"{f_darts / _forward_flops(fwd):.1f}x",
                      f"{t_s / t_d:.2f}x", ops])
    print(f"\n### the same ratios for the initial selections of seeds 0-{max(args.selections, 1) - 1} and the official "
          f"run's fixed selection (DARTS step {t_darts * 1e3:.1f} ms from above; target: sparse / 2 discrete steps "
          f"<= 0.8x, DARTS / sparse time >= DARTS / sparse FLOPs)\n")
    print(markdown_table(["selection", "sparse step (ms)", "DARTS / sparse time", "DARTS / sparse FLOPs",
                          "sparse / 2 discrete steps", "selected ops (normal, then reduce)"], srows))


#: The official run's selection at which the official sparse step was timed (DARTS edge order: node 0 reads
#: e0-e1, node 1 e2-e4, node 2 e5-e8, node 3 e9-e13). Normal: avg_pool e0, dil_conv_3x3 e1, avg_pool e3,
#: skip e4, avg_pool e6, skip e8, sep_conv_5x5 e12, skip e13; reduce: avg_pool e0, skip e1, dil_conv_5x5 e3,
#: max_pool e4, dil_conv_3x3 e6, sep_conv_5x5 e8, skip e9, avg_pool e13. As candidate indices
#: (input * 7 + op, ops in ISTA_PRIMITIVES order), per cell type and node, ascending.
OFFICIAL_SELECTION = (
    ((1, 12), (8, 16), (8, 23), (25, 30)),
    ((1, 9), (13, 14), (12, 25), (2, 29)),
)


def _lasso_problems(scale: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 8 problems of a search: A, mask of CompressedCode(seed) (float64) and b ~ scale * N(0, 1)."""
    code = CompressedCode(seed=seed)
    K = 2 * code.steps
    A = code.A.reshape(K, code.m, -1).double()
    mask = code.mask.expand(2, -1, -1).reshape(K, -1)
    b = scale * torch.randn(K, code.m, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
    return A, b, mask


def _top2(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return z.abs().masked_fill(~mask, -1.0).topk(2, -1).indices.sort(-1).values


def _clarabel_solve(A: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """One cvxpy problem per node, built and solved as the official code does (with Clarabel for MOSEK)."""
    import cvxpy as cp

    z = torch.zeros(A.shape[0], A.shape[-1], dtype=torch.float64)
    for k in range(A.shape[0]):
        n = int(mask[k].sum())
        Ak, bk = A[k, :, :n].numpy(), b[k].numpy()
        x = cp.Variable(n)
        prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(Ak @ x - bk) + cp.Parameter(nonneg=True, value=gamma)
                                      * cp.norm(x, 1)))
        prob.solve(solver=cp.CLARABEL)
        z[k, :n] = torch.from_numpy(x.value)
    return z


def bench_lasso(device: torch.device, scales: list[float], reps: int, fista: bool, gamma: float = 1e-5) -> None:
    """LASSO recovery of all 8 nodes: the exact homotopy, FISTA, and cvxpy + Clarabel (when installed)."""
    have_cvxpy = all(importlib.util.find_spec(m) is not None for m in ("cvxpy", "clarabel"))
    rows = []
    for scale in scales:
        A, b, mask = _lasso_problems(scale)
        Ad, bd, md = A.to(device), b.to(device), mask.to(device)
        exact = lasso(Ad, bd, gamma, mask=md)
        ref = _top2(exact.z.cpu(), mask)
        t_exact = median_time(lambda Ad=Ad, bd=bd, md=md: lasso(Ad, bd, gamma, mask=md), device, 1, reps)
        kkt = float(exact.kkt.max()) / gamma
        rows.append([f"{scale:g}", "homotopy (ours, exact)", exact.iterations, "8/8", f"{kkt:.2g}", "8/8",
                     f"{t_exact * 1e3:.2f}", "1.00"])
        if fista:
            t0 = time.perf_counter()
            res = lasso(Ad, bd, gamma, mask=md, method="fista", tol=1e-3, max_iter=20_000)
            sync(device)
            t_f = time.perf_counter() - t0
            same = int((_top2(res.z.cpu(), mask) == ref).all(-1).sum())
            rows.append([f"{scale:g}", "FISTA (previous default)", res.iterations, f"{int(res.converged.sum())}/8",
                         f"{float(res.kkt.max()) / gamma:.2g}", f"{same}/8", f"{t_f * 1e3:.1f}",
                         f"{t_f / t_exact:.1f}x"])
        if have_cvxpy:
            z = _clarabel_solve(A, b, mask, gamma)
            times = []
            for _ in range(max(reps // 2, 1)):
                t0 = time.perf_counter()
                _clarabel_solve(A, b, mask, gamma)
                times.append(time.perf_counter() - t0)
            t_c = statistics.median(times)
            same = int((_top2(z, mask) == ref).all(-1).sum())
            rows.append([f"{scale:g}", "cvxpy + Clarabel (official formulation)", "-", "-",
                         f"{float(kkt_violation(A, b, z, gamma, mask).max()) / gamma:.2g}", f"{same}/8",
                         f"{t_c * 1e3:.1f}", f"{t_c / t_exact:.1f}x"])
    print(f"\n### LASSO recovery of all 8 nodes (2 cell types x 4 nodes, m 7, n 14..35, gamma {gamma:g}) on "
          f"{device_name(device)}, torch {torch.__version__}\n")
    print(markdown_table(["b scale (std)", "solver", "iterations / breakpoints", "converged", "max KKT / gamma",
                          "same top-2 as homotopy", "time (ms)", "time vs homotopy"], rows))
    if not have_cvxpy:
        print("\ncvxpy + Clarabel rows skipped: not installed (pip install cvxpy clarabel)")
    else:
        print("\ntarget: the homotopy at least 4x faster than cvxpy + Clarabel, with the same supports")


def bench_tiny_search(device: torch.device) -> None:
    """Wall time of the `tiny` two-stage search on cifar10-mini (target: under 10 minutes on the CPU)."""
    import tempfile

    from nas_common import Task, get_dataset
    from nas_common.search import run_search

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        _, arch = run_search("ista-nas", Task(get_dataset("cifar10-mini"), device=device), out=Path(tmp) / "run",
                             preset="tiny", progress=False)
        dt = time.perf_counter() - t
    print(f"\n### tiny preset two-stage search on cifar10-mini: {dt:.0f} s ({dt / 60:.1f} min) on "
          f"{device_name(device)}; found {arch.describe()}")


if __name__ == "__main__":
    main()
