"""ISTA-NAS's sparse search step against the official code's, side by side in one process.

The official repository (iboing/ISTA-NAS) is not part of this project and nothing of it is copied
into it: give a checkout of it with `--official DIR`. Its search network (`ista_nas/search/models/
model_search.py`, with `operations.py` and `genotypes.py`) is loaded at run time from a temporary copy
renamed `official_ista` (the official package's name clashes with this one).

Both steps run at the official run's own selection (`bench_ista.OFFICIAL_SELECTION`; the official
network's projected weights are checked to be non-zero exactly there), on the same random batch, with
the official search's optimizers: the official step is its OuterTrainer step (Adam on the compressed
codes through `loss.backward(retain_graph=True)`, which also computes every weight gradient) followed by
its InnerTrainer weight step (SGD, grad clip 5); ours is `ista_nas.benchmarking.sparse_search_step`.
Timings are medians of interleaved repeats, so load from other processes hits both alike. The official
code runs in NCHW (it never converts); both layouts are timed for ours, and the official network in
channels_last too, to separate the layout from the algorithm.

    git clone https://github.com/iboing/ISTA-NAS /tmp/ISTA-NAS
    python packages/ista-nas/benchmarks/bench_vs_official.py --official /tmp/ISTA-NAS [--threads 2] [--iters 7]
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ista_nas import CompressedCode
from ista_nas.benchmarking import sparse_search_step
from ista_nas.network import search_supernet
from nas_common.benchmarking import markdown_table, median_times_interleaved
from nas_common.runs import device_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ista import OFFICIAL_SELECTION  # noqa: E402

FILES = ("search/operations.py", "search/genotypes.py", "search/models/model_search.py")
N_OPS = 7


def load_official(checkout: Path, tmp: Path) -> type:
    """The official search `NetWork` class, imported from a renamed temporary copy of its three files."""
    src = checkout / "ista_nas"
    missing = [f for f in FILES if not (src / f).is_file()]
    if missing:
        raise SystemExit(f"--official {checkout}: not a checkout of iboing/ISTA-NAS (missing "
                         f"{', '.join('ista_nas/' + f for f in missing)})")
    pkg = tmp / "official_ista"
    for f in FILES:
        (pkg / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / f, pkg / f)
    for d in (pkg, pkg / "search", pkg / "search" / "models"):
        (d / "__init__.py").touch()
    sys.path.insert(0, str(tmp))
    return importlib.import_module("official_ista.search.models.model_search").NetWork


def official_step(network: type, C: int, layers: int, x: torch.Tensor, y: torch.Tensor,
                  fmt: torch.memory_format) -> Callable[[], None]:
    """The official search step at OFFICIAL_SELECTION: projection matrices and biases built by the
    official `sample_and_proj` rule from a code that is non-zero on the selection only."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = network(C, 10, layers, proj_dims=7).to(memory_format=fmt)
    mats, biases = [], []
    for cell in OFFICIAL_SELECTION:
        cell_mats, cell_bias = [], []
        for i, sel in enumerate(cell):
            A = rng.random((7, (i + 2) * N_OPS))
            E = A.T @ A - np.eye(A.shape[1])
            z = rng.standard_normal(A.shape[1])
            off = np.setdiff1d(np.arange(A.shape[1]), np.array(sel))
            z[off], A[:, off], E[:, off] = 0.0, 0.0, 0.0
            cell_mats.append(torch.from_numpy(A).float())
            cell_bias.append(torch.from_numpy((E.T @ z).reshape(-1, N_OPS)).float())
        mats.append(cell_mats)
        biases.append(torch.cat(cell_bias))
    net.init_proj_mat(*mats)
    net.init_bias(*biases)
    with torch.no_grad():  # the projected weights select exactly OFFICIAL_SELECTION
        net.proj_alphas(net.A_normals, net.A_reduces)
        for cell, alphas in zip(OFFICIAL_SELECTION, (net.alphas_normal, net.alphas_reduce), strict=True):
            start = 0
            for i, sel in enumerate(cell):
                nz = torch.nonzero(alphas[start:start + i + 2].reshape(-1)).flatten().tolist()
                assert nz == sorted(sel), f"node {i}: the official weights select {nz}, not {sorted(sel)}"
                start += i + 2
    weights = [p for k, p in net.named_parameters() if "alpha" not in k]
    w_opt = torch.optim.SGD(weights, 0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=6e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    net.train()
    x = x.contiguous(memory_format=fmt)

    def step() -> None:
        a_opt.zero_grad()
        net._loss(x, y).backward(retain_graph=True)
        a_opt.step()
        w_opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        w_opt.step()

    return step


def our_step(C: int, layers: int, x: torch.Tensor, y: torch.Tensor, fmt: torch.memory_format
             ) -> Callable[[], None]:
    torch.manual_seed(0)
    sparse = search_supernet(C, 10, layers, 4, 3).to(memory_format=fmt).train()
    w_opt = torch.optim.SGD(sparse.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    code = CompressedCode(seed=0)
    z, _ = code.recover(1e-5)
    code.set_code(z)
    code.support.copy_(torch.tensor(OFFICIAL_SELECTION))
    step, _ = sparse_search_step(sparse, code, w_opt, x.contiguous(memory_format=fmt), y)
    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, required=True, help="a checkout of github.com/iboing/ISTA-NAS")
    ap.add_argument("--C", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=7)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    nchw, cl = torch.contiguous_format, torch.channels_last
    with tempfile.TemporaryDirectory() as tmp:
        network = load_official(args.official, Path(tmp))
        steps = [official_step(network, args.C, args.layers, x, y, nchw),
                 official_step(network, args.C, args.layers, x, y, cl),
                 our_step(args.C, args.layers, x, y, nchw), our_step(args.C, args.layers, x, y, cl)]
        t_off, t_off_cl, t_nchw, t_cl = median_times_interleaved(steps, cpu, args.warmup, args.iters)
    print(f"### ISTA-NAS sparse search step at the official run's selection: C {args.C}, {args.layers} cells, "
          f"batch {args.batch}, 32x32, {device_name(cpu)}, {torch.get_num_threads()} threads, median of "
          f"{args.iters} interleaved, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}\n")
    print(markdown_table(["step", "layout", "ms", "official (NCHW) / this"], [
        ["official", "NCHW (as shipped)", f"{t_off * 1e3:.0f}", "1.00x"],
        ["official", "channels_last", f"{t_off_cl * 1e3:.0f}", f"{t_off / t_off_cl:.2f}x"],
        ["ista_nas", "NCHW", f"{t_nchw * 1e3:.0f}", f"{t_off / t_nchw:.2f}x"],
        ["ista_nas", "channels_last (the default)", f"{t_cl * 1e3:.0f}", f"{t_off / t_cl:.2f}x"],
    ]))
    print(f"\nsame layout: official / ista_nas = {t_off / t_nchw:.2f}x (NCHW), {t_off_cl / t_cl:.2f}x (channels_last)")


if __name__ == "__main__":
    main()
