"""python -m tools.bench --preset micro|smoke|mini|evidence|cifar10 --methods all|NAME,... --seeds 0,1,2 --out DIR

The evidence protocol (`--preset evidence`): each method's network next to random architectures of its
space at the same MACs, the space's reference network scaled to them and random search at equal wall
time, over several seeds, judged on a test split no choice saw; results.md says which differences are
real (paired one-sided tests) and how well each supernet ranks architectures (Kendall's tau).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from .presets import PRESETS

    ap = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    ap.add_argument("--preset", default="smoke", choices=sorted(PRESETS),
                    help="micro (seconds, a wiring check), smoke (make demo), mini (one seed), evidence (the full "
                         "protocol, under 2 hours on a 2-core CPU with --jobs 2), cifar10 (the protocol on a GPU)")
    ap.add_argument("--methods", default="all", help="all, or names from `nas list`, comma-separated")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2 (default: the preset's)")
    ap.add_argument("--out", default="runs/bench", help="results directory (resumes if it holds results)")
    ap.add_argument("--dataset", default=None,
                    help="override the preset's dataset: any of `nas list` (imagefolder with --data-dir DIR "
                         "holding train/ and val/), or npz:PATH with x_train, y_train, x_test, y_test")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--download", action="store_true")
    ap.add_argument("--budget-macs", type=float, default=None,
                    help="the same MACs budget for every method that takes one")
    ap.add_argument("--budget-params", type=float, default=None)
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    ap.add_argument("--launcher", default="local", choices=["local", "ray", "submitit"])
    ap.add_argument("--jobs", type=int, default=1, help="jobs at a time (local launcher)")
    ap.add_argument("--nproc-retrain", type=int, default=1,
                    help="retrain each architecture data-parallel with torchrun on N processes (GPUs)")
    ap.add_argument("--report", metavar="DIR", default=None, help="only rebuild results.md and pareto.png of DIR")
    ap.add_argument("--estimate", action="store_true", help="only print the estimated wall time and exit")
    ap.add_argument("--calibrate-from", metavar="DIR", default=None,
                    help="also fit the time estimate to the finished jobs of the harness run in DIR")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from nas_common.errors import NASError

    args = parse_args(argv)
    try:
        from .harness import check_dependencies

        check_dependencies()
        if args.report:
            from pathlib import Path

            from .report import write_report
            from .results import read_rows

            if not (Path(args.report) / "results.jsonl").exists():
                raise NASError(f"{args.report!r} holds no results.jsonl: give the --out of a harness run")
            s = write_report(Path(args.report), read_rows(Path(args.report)))
            print(s["table"])
            if s.get("compare_table"):
                print()
                print(s["compare_table"])
            if s.get("note"):
                print(f"\nnote: {s['note']}")
            print(f"\nwritten: {s['results_md']}, {s['pareto_png']}")
            return 0
        from .harness import Harness

        try:
            seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip()) if args.seeds else None
        except ValueError:
            raise NASError(f"--seeds {args.seeds!r} must be comma-separated integers, e.g. 0,1,2") from None
        h = Harness(args.preset, args.out, methods=args.methods, seeds=seeds, dataset=args.dataset,
                    data_dir=args.data_dir, download=args.download, budget_macs=args.budget_macs,
                    budget_params=args.budget_params, device=args.device, launcher=args.launcher, jobs=args.jobs,
                    nproc_retrain=args.nproc_retrain, calibrate_from=args.calibrate_from)
        if args.estimate:
            h.print_estimate(h.estimate())
            return 0
        s = h.run()
        print()
        print(s["table"])
        if s.get("compare_table"):
            print()
            print(s["compare_table"])
        if s.get("note"):
            print(f"\nnote: {s['note']}")
        print(f"\nwritten: {s['results_md']}, {s['pareto_png']}, {args.out}/results.jsonl")
        if s.get("overhead_frac") is not None:
            print(f"harness overhead: {s['overhead_s']:.1f}s of {s['wall_s']:.1f}s ({100 * s['overhead_frac']:.1f}%)")
        return 0
    except NASError as e:
        print(f"tools.bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
