"""`nas train ARCH.json|NAME`: train an architecture from scratch into a run directory.

    nas train resnet20 --dataset cifar10-mini --preset tiny --epochs 3 --out runs/r20
    nas train runs/search/arch.json --preset darts-eval --out runs/eval
    torchrun --nproc-per-node 4 -m nas_common.cli train darts-v2 --preset darts-eval --out runs/dv2
"""
from __future__ import annotations

import argparse
import os

from .. import dist
from ..cli import add_common_run_args, add_keep_best_arg, command, emit_json


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", help="an arch.json, a run directory holding one, or a built-in name (see `nas list`)")
    add_common_run_args(p)
    p.add_argument("--out", required=True, help="the run directory to write")
    p.add_argument("--preset", default="paper",
                   help="training recipe: paper (ResNet SGD 0.1 Nesterov, cosine), darts-eval, tas or tiny")
    p.add_argument("--config", default=None, help="a TOML file of TrainConfig values (applied after the preset)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override one TrainConfig value, e.g. -o label_smoothing=0.1 (repeatable)")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the preset's)")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (default: the preset's)")
    p.add_argument("--teacher", default=None, help="a trained run directory: distil from its model (KD)")
    p.add_argument("--adapt", action="store_true",
                   help="rebuild an arch.json for the dataset's classes and input shape instead of refusing")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (each epoch still logs one line; -q turns those off)")
    add_keep_best_arg(p, "test/top1")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _overrides(args: argparse.Namespace) -> list[str]:
    ov = list(args.override)
    for key, val in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr)):
        if val is not None:
            ov.append(f"{key}={val}")
    return ov


@command("train", "train an architecture (arch.json or built-in name) from scratch", arguments)
def run(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..runs import device_name, package_versions
    from ..train import train_arch

    device = resolve_device(args.device)
    quiet = args.json or args.no_progress
    if not args.json and os.environ.get("RANK", "0") == "0":
        v = package_versions()
        print(f"nas train {args.arch}: dataset {args.dataset}, preset {args.preset}, device {device} "
              f"({device_name(device)}), seed {args.seed}, torch {v.get('torch')}, out {args.out}", flush=True)
    main = True
    try:
        res = train_arch(args.arch, args.dataset, out=args.out, preset=args.preset, config_file=args.config,
                         overrides=_overrides(args), seed=args.seed, device=device, teacher=args.teacher,
                         resume=args.resume, overwrite=args.overwrite, adapt=args.adapt, data_dir=args.data_dir,
                         download=args.download, progress=not quiet, verbose=not quiet, keep_best=args.keep_best)
        main = dist.is_main()
        dist.barrier()  # leave the process group together: a rank tearing it down early can abort the others
    finally:
        dist.cleanup()
    if not main:
        return 0
    m = res.metrics
    if args.json:
        emit_json({"run_dir": str(res.run_dir), "arch": res.arch.digest, "costs": res.arch.costs,
                          "metrics": m})
        return 0
    print(f"trained {res.arch.space} {res.arch.digest}: MACs {res.arch.costs.get('macs', 0) / 1e6:.2f}M  "
          f"params {res.arch.costs.get('params', 0) / 1e6:.3f}M")
    print("| epochs | train loss | test top-1 | test top-5 | test loss | images/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {m['epochs']} | {m.get('train_loss', float('nan')):.4f} | {m.get('test_top1', float('nan')):.2f} | "
          f"{m.get('test_top5', float('nan')):.2f} | {m.get('test_loss', float('nan')):.4f} | "
          f"{m.get('images_per_s', 0):.0f} |")
    print(f"written: {args.out}/model.pt (evaluate with `nas eval {args.out}`, export with "
          f"`nas export {args.out} --onnx model.onnx`)")
    return 0
