"""Training throughput: the Trainer vs a plain hand-written PyTorch loop (issue 4).

Same model (ResNet-20), same data (a cifar10-mini subset), same optimizer (SGD 0.1 Nesterov, wd 5e-4),
same batch and the same on-device augmentation (the DeviceLoader: crop + flip); the plain loop is the
textbook forward / cross-entropy / zero_grad / backward / step. Rows are interleaved and repeated, and
the best of the repeats is kept, so that load from other processes hurts both sides alike. Target: the
Trainer at >= 0.95x the plain loop's images/s (both NCHW fp32). On CUDA it also compares AMP (bf16) +
channels_last with fp32; on a CPU, channels_last (the default) with NCHW.

    python packages/nas-common/benchmarks/bench_trainer.py [--images 1024] [--batch 128] [--epochs 1]
                                                           [--repeats 2] [--threads N]
"""
from __future__ import annotations

import argparse
import tempfile

import torch

from nas_common import Run, get_arch, get_dataset
from nas_common.benchmarking import markdown_table, plain_loop_images_per_s, trainer_images_per_s
from nas_common.config import resolve_config
from nas_common.device import resolve_device
from nas_common.train import TrainConfig, Trainer


def _model(device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_arch("resnet20").build().to(device)


def _config(args: argparse.Namespace, **kw) -> TrainConfig:
    values = {"epochs": args.epochs, "batch_size": args.batch, "eval_every": 0, **kw}
    return resolve_config(TrainConfig, preset="paper", values=values)


def plain_loop(split, args: argparse.Namespace, device: torch.device) -> float:
    """images/s of the hand-written loop."""
    return plain_loop_images_per_s(_model(device), split, args.batch, args.epochs, device)


def trainer_loop(split, args: argparse.Namespace, device: torch.device, with_run: bool = False, **cfg) -> float:
    """images/s of Trainer.fit (optionally with a Run: metrics, TensorBoard, a checkpoint per epoch)."""
    model = _model(device)
    config = _config(args, **cfg)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run.create(f"{tmp}/run", {"kind": "bench"}, progress=False) if with_run else None
        if run is not None:
            run.tb  # noqa: B018  (open TensorBoard before timing, as a real run has it open)
        rate = trainer_images_per_s(Trainer(model, config, run=run, device=device, seed=0), split, args.batch)
        if run is not None:
            run.close()
    return rate


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024, help="training images taken from cifar10-mini")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    split = get_dataset("cifar10-mini").train.head(args.images)
    rows = {"plain PyTorch loop": [], "Trainer": [], "Trainer + Run (metrics, TB, checkpoint/epoch)": []}
    for _ in range(args.repeats):
        rows["plain PyTorch loop"].append(plain_loop(split, args, device))
        same = {"amp": "off", "channels_last": False}  # the same work as the plain fp32 loop, on CUDA too
        rows["Trainer"].append(trainer_loop(split, args, device, **same))
        rows["Trainer + Run (metrics, TB, checkpoint/epoch)"].append(
            trainer_loop(split, args, device, with_run=True, **same))
    base = max(rows["plain PyTorch loop"])
    dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"cpu, {torch.get_num_threads()} threads")
    print(f"ResNet-20, cifar10-mini ({args.images} images), batch {args.batch}, {args.epochs} epoch(s), "
          f"best of {args.repeats}, {dev_name}, torch {torch.__version__}\n")
    print(markdown_table(["loop", "images/s", "ratio vs plain"],
                         [[name, max(v), max(v) / base] for name, v in rows.items()]))
    if device.type == "cuda":
        fp32 = max(trainer_loop(split, args, device, amp="off", channels_last=False) for _ in range(args.repeats))
        amp = max(trainer_loop(split, args, device, amp="bf16", channels_last=True) for _ in range(args.repeats))
        fp16 = max(trainer_loop(split, args, device, amp="fp16", channels_last=True) for _ in range(args.repeats))
        print()
        print(markdown_table(["Trainer on CUDA", "images/s", "speed-up vs fp32"],
                             [["fp32, NCHW", fp32, 1.0], ["AMP bf16 + channels_last", amp, amp / fp32],
                              ["AMP fp16 (GradScaler) + channels_last", fp16, fp16 / fp32]]))
    else:
        nchw = max(rows["Trainer"])
        nhwc = max(trainer_loop(split, args, device, amp="off", channels_last=True) for _ in range(args.repeats))
        print()
        print(markdown_table(["Trainer on the CPU", "images/s", "speed-up vs NCHW"],
                             [["NCHW (channels_last=false)", nchw, 1.0],
                              ["channels_last (the default)", nhwc, nhwc / nchw]]))


if __name__ == "__main__":
    main()
