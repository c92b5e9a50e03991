"""Time to count MACs (torch.utils.flop_counter) of the reference networks, against the published sizes.

Issue 3 asks for under a second each for ResNet-56 and DARTS-V2 on this CPU. "cold" is the first
count of that network (after a one-time set-up count on a 1x1 conv, reported above the table); "warm" is the
median of the
next `--repeats` counts; "closed form" is `resnet_conv_shapes` (the cost table TAS uses), no tracing.
MACs are multiply-accumulates (what the papers call FLOPs).

    python packages/nas-common/benchmarks/bench_costs.py [--archs resnet56,darts-v2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from nas_common import count_macs, count_params, get_arch
from nas_common.benchmarking import markdown_table
from nas_common.costs import shapes_macs
from nas_common.costs.published import PUBLISHED
from nas_common.spaces.resnet import resnet_conv_shapes


def _timed(fn):  # noqa: ANN001, ANN202
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _pub(name: str) -> str:
    p = PUBLISHED.get(name, {})
    macs = f"{p['macs'] / 1e6:.1f}M" if p.get("macs") else "-"
    params = f"{p['params'] / 1e6:.2f}M" if p.get("params") else "-"
    return f"{macs} / {params}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet56,darts-v2,resnet20,resnet110,resnet18,resnet50",
                    help="comma-separated built-in architectures (the first two are the issue's targets)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    # the first count in a process pays one-time set-up (torch's dispatch-mode and formula imports)
    _, setup = _timed(lambda: count_macs(torch.nn.Conv2d(3, 3, 1), (3, 4, 4)))
    rows = []
    for name in args.archs.split(","):
        arch = get_arch(name)
        model = arch.build()
        shape = tuple(arch.net["input"])
        macs, cold = _timed(lambda m=model, s=shape: count_macs(m, s))
        warm = statistics.median(_timed(lambda m=model, s=shape: count_macs(m, s))[1] for _ in range(args.repeats))
        closed = "-"
        if arch.space == "resnet":
            m2, t = _timed(lambda a=arch, s=shape: shapes_macs(resnet_conv_shapes(a.spec, s, a.net["num_classes"])))
            assert m2 == macs, (name, m2, macs)
            closed = f"{t * 1e3:.2f} ms"
        rows.append([name, f"{macs / 1e6:.2f}M", f"{count_params(model) / 1e6:.3f}M", _pub(name),
                     f"{cold:.3f}", f"{warm:.3f}", closed])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load:.1f}, batch 1, MACs counted on one intra-op thread; one-time set-up {setup:.2f} s")
    print(markdown_table(["arch", "MACs", "params", "published MACs / params", "cold s", "warm s", "closed form"],
                         rows))


if __name__ == "__main__":
    main()
