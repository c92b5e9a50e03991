"""Where a finished NAT search's policy puts its transforms, against random transforms.

bench_nat compares each method's best of `num_samples` transforms; with 10 samples that maximum is
noisy. This draws N transforms of the input from the search's GCN policy and N random ones, scores each
under the search's shared weights on the held-out split the search selects on and on the test split,
and prints the mean, spread and maximum of each, how well held-out accuracy predicts test accuracy
(Pearson r), and the expected best-of-10 (held-out choice, 2,000 bootstrap draws):

    python packages/nat/benchmarks/landscape_nat.py RUN_DIR --seed SEED [--samples 300] [--preset tiny]
        [--input-arch darts-v2]

RUN_DIR is a finished NAT search on cifar10-mini made with that seed and preset. Scoring N candidates
twice takes about 1.6 s a candidate here (2 CPU threads, tiny preset).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from nas_common.arch import Arch
from nas_common.benchmarking import markdown_table
from nas_common.data import get_dataset
from nas_common.methods import Task
from nas_common.search import run_search
from nat_nas import NATSearch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--seed", type=int, required=True, help="the seed the search was made with")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--input-arch", default="darts-v2")
    ap.add_argument("--dataset", default="cifar10-mini")
    args = ap.parse_args()
    task = Task(dataset=get_dataset(args.dataset), seed=args.seed)
    scores: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    for kind, extra in (("NAT (GCN, sampled)", {}), ("random transforms", {"policy_type": "random"})):
        tag = "gcn" if not extra else "random"
        res, _ = run_search("nat", task, out=f"{args.run_dir}-landscape-{tag}{args.samples}", preset=args.preset,
                            overwrite=True, progress=False,
                            overrides={"input_arch": args.input_arch, "policy": args.run_dir,
                                       "num_samples": args.samples, **extra})
        state = res.state
        archs = [Arch("darts", spec, state["net"]) for spec in state["candidates"]]
        test = np.array(NATSearch().score_archs(args.run_dir, task, archs))
        scores[kind] = (np.array(state["candidate_acc"]), test, len({json.dumps(s) for s in state["candidates"]}))
    rng = np.random.default_rng(0)
    rows = []
    for kind, (sel, test, unique) in scores.items():
        draws = [rng.choice(len(sel), min(10, len(sel)), replace=False) for _ in range(2000)]
        picks = np.array([idx[np.argmax(sel[idx])] for idx in draws])  # each draw's held-out choice
        rows.append([kind, len(sel), unique, f"{sel.mean():.4f} ± {sel.std():.4f}", f"{sel.max():.4f}",
                     f"{test.mean():.4f} ± {test.std():.4f}", f"{np.corrcoef(sel, test)[0, 1]:.3f}",
                     f"{sel[picks].mean():.4f}", f"{test[picks].mean():.4f}"])
    print(f"\n### Transforms of {args.input_arch} under {args.run_dir}'s shared weights (seed {args.seed})\n")
    print(markdown_table(["method", "samples", "unique", "held-out mean ± sd", "held-out max", "test mean ± sd",
                          "r(held-out, test)", "best-of-10 held-out", "best-of-10 test"], rows))


if __name__ == "__main__":
    main()
