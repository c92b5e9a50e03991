"""`nas export RUN_DIR --onnx FILE` (or `--format pt2 --output FILE`): the trained model for deployment.

    nas export runs/r20 --onnx r20.onnx                 # ONNX (needs: pip install "nas-common[onnx]")
    nas export runs/r20 --format pt2 --output r20.pt2   # a torch.export program (torch.export.load)

ONNX: exported at an opset the installed exporter supports (the TorchScript exporter, or the dynamo
exporter when onnxscript is installed), checked by onnx's checker, and, when onnxruntime is installed,
run on a random batch and compared with PyTorch's logits (within 1e-4). The opset reported is the one
the file declares. Both formats have a dynamic batch axis and are written atomically.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from ..cli import command, emit_json
from ..errors import ConfigError, RunError

ONNX_EXTRA = 'pip install "nas-common[onnx]"'
TOLERANCE = 1e-4


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory with a trained model (model.pt)")
    p.add_argument("--onnx", default=None, metavar="FILE", help="the .onnx file to write (same as --format onnx "
                                                                "--output FILE)")
    p.add_argument("--format", choices=("onnx", "pt2"), default=None,
                   help="onnx (default), or pt2: a torch.export program, loaded with torch.export.load")
    p.add_argument("--output", default=None, metavar="FILE", help="the file to write")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset version (default: the exporter's; the TorchScript exporter writes opsets "
                        "7-20, the dynamo exporter (with onnxscript installed) 18 and later)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def onnx_exporter() -> tuple[str, int, int, int]:
    """(exporter, lowest opset, highest opset, default opset) of the installed torch.onnx: "dynamo"
    when onnxscript is installed (what torch.onnx.export then uses), else "torchscript"."""
    from torch.onnx import _constants as c

    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        hi = getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 17)
        return "torchscript", c.ONNX_MIN_OPSET, hi, min(c.ONNX_DEFAULT_OPSET, hi)
    return "dynamo", 18, c.ONNX_MAX_OPSET, max(18, c.ONNX_DEFAULT_OPSET)


def _example(model: Any, arch: Any, batch: int = 2) -> Any:
    import torch

    return torch.zeros(batch, *arch.net["input"])


def _logits(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def export_onnx(run_dir: str | Path, path: str | Path, opset: int | None = None) -> dict:
    """Write the model of `run_dir` to `path` as ONNX (atomically, dynamic batch axis); returns a
    summary with the file's real opset and how it was checked. Needs the `onnx` package."""
    import torch

    from ..arch import load_arch
    from ..io import atomic_path, check_writable_file
    from ..runs import load_model

    try:
        import onnx
    except ImportError:
        raise ConfigError(f"nas export --onnx needs the onnx package: {ONNX_EXTRA}") from None
    exporter, lo, hi, default = onnx_exporter()
    if opset is None:
        opset = default
    if not lo <= opset <= hi:
        raise ConfigError(f"--opset {opset}: the installed {exporter} exporter writes opsets {lo} to {hi}")
    dest = check_writable_file(path, "--onnx", ConfigError)
    model = load_model(run_dir).cpu().eval()
    arch = load_arch(run_dir)
    x = _example(model, arch)
    with atomic_path(dest) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dynamo = exporter == "dynamo"
            kw = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamo else \
                {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}
            try:
                torch.onnx.export(model, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                                  opset_version=opset, dynamo=dynamo, external_data=False, **kw)
            except Exception as e:  # the exporter's own error types
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise RunError(f"the {exporter} ONNX exporter failed at opset {opset}: {first}") from None
        proto = onnx.load(str(tmp))
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as e:  # onnx raises its own ValidationError types
            raise RunError(f"the exported model fails onnx's checker: {e}") from None
        real = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        ran = _check_with_onnxruntime(str(tmp), model, arch)
    if real != opset:
        from ..log import get_logger

        get_logger("export").warning("asked for opset %s; the exporter wrote opset %s", opset, real)
    return {"format": "onnx", "onnx": str(dest), "output": str(dest), "input": [None, *arch.net["input"]],
            "opset": real, "opset_requested": opset, "exporter": exporter, "checked": True,
            "onnxruntime": ran, "bytes": dest.stat().st_size}


def _check_with_onnxruntime(path: str, model: Any, arch: Any) -> dict[str, Any] | None:
    """Run the file with onnxruntime (when installed) on a random batch of 3: its logits must equal
    PyTorch's within TOLERANCE. None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import numpy as np
    import torch

    x = torch.randn(3, *arch.net["input"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = _logits(model(x)).numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
    if not diff <= TOLERANCE:
        raise RunError(f"onnxruntime's logits differ from PyTorch's by {diff:.3g} (> {TOLERANCE}): the export "
                       f"is wrong; please report it with the run directory")
    return {"max_abs_diff": diff, "version": ort.__version__}


def export_pt2(run_dir: str | Path, path: str | Path) -> dict:
    """Write the model of `run_dir` as a torch.export program (`torch.export.load(path).module()`),
    dynamic batch axis, checked against the model on a batch of 3."""
    import torch

    from ..arch import load_arch
    from ..io import atomic_path, check_writable_file
    from ..runs import load_model

    dest = check_writable_file(path, "--output", ConfigError)
    model = load_model(run_dir).cpu().eval()
    arch = load_arch(run_dir)
    x = _example(model, arch)
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:  # torch.export's own error types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"torch.export cannot trace this model: {first}") from None
    x3 = torch.randn(3, *arch.net["input"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((_logits(program.module()(x3)) - _logits(model(x3))).abs().max())
    if not diff <= TOLERANCE:
        raise RunError(f"the exported program's logits differ from the model's by {diff:.3g}: please report it")
    with atomic_path(dest) as tmp:
        torch.export.save(program, str(tmp))
    return {"format": "pt2", "output": str(dest), "input": [None, *arch.net["input"]], "max_abs_diff": diff,
            "torch": torch.__version__, "bytes": dest.stat().st_size}


@command("export", "export a trained model to ONNX or a torch.export program", arguments)
def run(args: argparse.Namespace) -> int:
    fmt = args.format or "onnx"
    if args.onnx and args.output:
        raise ConfigError("give --onnx FILE or --output FILE, not both")
    if args.onnx and args.format == "pt2":
        raise ConfigError("--onnx writes ONNX: for a torch.export program use --format pt2 --output FILE")
    out = args.onnx or args.output
    if not out:
        raise ConfigError("name the file to write: --onnx model.onnx, or --format pt2 --output model.pt2")
    if fmt == "pt2":
        if args.opset is not None:
            raise ConfigError("--opset is an ONNX option; a pt2 program has none")
        info = export_pt2(args.run_dir, out)
    else:
        info = export_onnx(args.run_dir, out, args.opset)
    if args.json:
        emit_json(info)
    elif fmt == "pt2":
        print(f"written: {info['output']} ({info['bytes'] / 1e6:.2f} MB, torch.export program, input "
              f"{info['input']}; matches the model within {info['max_abs_diff']:.2g}; load it with "
              f"torch.export.load(path).module())")
    else:
        ort = info["onnxruntime"]
        note = (f"onnxruntime {ort['version']} matches PyTorch within {ort['max_abs_diff']:.2g}" if ort
                else "onnxruntime not installed: not run")
        print(f"written: {info['onnx']} ({info['bytes'] / 1e6:.2f} MB, input {info['input']}, opset {info['opset']} "
              f"({info['exporter']} exporter); checked by onnx.checker; {note})")
    return 0
