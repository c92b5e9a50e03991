"""A data-parallel search step against the same global batch in one process (issue 14's benchmark).

    python packages/nas-common/benchmarks/bench_ddp_search.py [--methods ista-nas,tas] [--steps 8]

For each method: a short real search (its `tiny` preset, a few steps) in one process at global batch
B with all `--threads` cores, then the same search under `torchrun --nproc-per-node 2` (gloo on the
CPU, the cores split between the ranks) at B/2 per rank. Every search step a method marks with
`ctx.step()` is timed (nas_common.context's step observers), and the medians are compared. On a CPU
the two ranks share the machine's cores with the collectives' copies, so this shows the overhead of
the collectives and the rank-0 decisions, not a speed-up; on GPUs each rank has its own device.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from nas_common.benchmarking import markdown_table

# the worker: one search, its step times written as JSON by rank 0
WORKER = textwrap.dedent('''
    import contextlib, json, sys, time
    import torch
    from nas_common import Task, dist, get_dataset
    from nas_common.context import STEP_OBSERVERS
    from nas_common.search import run_search

    method, overrides, out, n_train = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(int(sys.argv[5]))
    times = []

    @contextlib.contextmanager
    def timed():
        t0 = time.perf_counter()
        yield
        times.append(time.perf_counter() - t0)

    task = Task(get_dataset("cifar10-mini").subset(n_train, 64), device=torch.device("cpu"), seed=0)
    with STEP_OBSERVERS.observe(timed):
        run_search(method, task, out=out + "/run", preset="tiny", overrides=overrides, progress=False)
    if dist.is_main():
        json.dump({"times": times, "world": dist.world_size()}, open(out + "/times.json", "w"))
    dist.barrier()
    dist.cleanup()
''')

# per method: overrides that make the tiny preset a few steps long at a given (global) batch
SHORT = {
    "ista-nas": lambda b: {"epochs": 2, "batch_size": b},
    "tas": lambda b: {"epochs": 2, "batch_size": b},
    "bsn": lambda b: {"epochs": 2, "batch_size": b, "val_size": 64},
    "posterior-nas": lambda b: {"epochs": 2, "batch_size": b, "num_samples": 4},
    "nat": lambda b: {"epochs": 2, "batch_size": b},
}


def run(method: str, procs: int, global_batch: int, n_train: int, tmp: Path, args_threads: int = 2) -> dict:
    out = tmp / f"{method}-{procs}"
    out.mkdir(parents=True, exist_ok=True)
    script = tmp / "worker.py"
    script.write_text(WORKER)
    overrides = SHORT[method](global_batch)  # every method's batch_size is the global batch (ctx.per_rank_batch)
    threads = max(1, args_threads // procs)  # the same cores either way
    cmd = [sys.executable, str(script), method, json.dumps(overrides), str(out), str(n_train), str(threads)]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
               *cmd[1:]]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1][:120], "wall": wall}
    data = json.loads((out / "times.json").read_text())
    steady = data["times"][2:] or data["times"]  # the first steps pay one-time set-up
    return {"median": statistics.median(steady), "steps": len(data["times"]), "wall": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="ista-nas,tas", help="comma-separated methods (default: the issue's)")
    ap.add_argument("--batch", type=int, default=64, help="global batch (each of 2 ranks takes half)")
    ap.add_argument("--images", type=int, default=512, help="training images (a few steps per epoch)")
    ap.add_argument("--threads", type=int, default=2, help="cores in all: one process uses them all, two split them")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for m in args.methods.split(","):
            one = run(m, 1, args.batch, args.images, Path(d), args.threads)
            two = run(m, 2, args.batch, args.images, Path(d), args.threads)
            if "error" in one or "error" in two:
                rows.append([m, one.get("error", "ok"), two.get("error", "ok"), "-", "-"])
                continue
            rows.append([m, f"{one['median'] * 1e3:.0f} ms ({one['steps']} steps)",
                         f"{two['median'] * 1e3:.0f} ms ({two['steps']} steps)",
                         f"{two['median'] / one['median']:.2f}x",
                         f"{one['wall']:.0f} s / {two['wall']:.0f} s"])
    print(f"search step, global batch {args.batch}: 1 process ({args.threads} threads) vs 2 (gloo, "
          f"{max(1, args.threads // 2)} each), median of the marked "
          f"steps after the first two; CPU: the ratio is the collectives' overhead, not a speed-up\n")
    print(markdown_table(["method", "1 process", "2 processes (batch/2 each)", "2 / 1", "wall 1 / 2"], rows))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
