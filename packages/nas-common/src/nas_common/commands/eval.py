"""`nas eval RUN_DIR`: top-1, top-5 and loss of a trained model on a dataset's test split."""
from __future__ import annotations

import argparse

from ..cli import add_common_run_args, command, emit_json


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory with a trained model (model.pt), e.g. the --out of `nas train`")
    add_common_run_args(p, dataset_help="dataset name or npz:PATH (default: the one the run was trained on)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--json", action="store_true", help="print one JSON object")


@command("eval", "evaluate a trained model (top-1, top-5, loss) on a test split", arguments)
def run(args: argparse.Namespace) -> int:
    from ..arch import load_arch
    from ..data import get_dataset
    from ..device import resolve_device
    from ..errors import ConfigError
    from ..runs import load_model
    from ..train import evaluate, fit_arch_to_dataset

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    device = resolve_device(args.device)
    model = load_model(args.run_dir)
    name = args.dataset or _recorded_dataset(args.run_dir)
    ds = get_dataset(name, data_dir=args.data_dir, download=args.download)
    fit_arch_to_dataset(load_arch(args.run_dir), ds, what="trained model")
    model = model.to(device)
    m = evaluate(model, ds.test, device=device, batch_size=args.batch_size)
    out = {"run_dir": str(args.run_dir), "dataset": ds.name, "device": str(device), **m}
    if not args.dataset:
        out["dataset_from"] = "the run's config.toml"
    if args.json:
        emit_json(out)
    else:
        print(f"| run | dataset | images | top-1 | top-5 | loss |\n|---|---|---:|---:|---:|---:|\n"
              f"| {args.run_dir} | {ds.name} | {m['n']} | {m['top1']:.2f} | {m['top5']:.2f} | {m['loss']:.4f} |")
    return 0


def _recorded_dataset(run_dir: str) -> str:
    """The dataset a run was made on (its config.toml), so `nas eval RUN` evaluates on the same data."""
    from pathlib import Path

    from ..config import load_toml
    from ..errors import RunError

    f = Path(run_dir) / "config.toml"
    if not f.is_file():
        return "cifar10-mini"
    name = load_toml(f).get("dataset")
    if not isinstance(name, str) or not name:
        raise RunError(f"{f} records no dataset: pass --dataset")
    return name
