"""`nas export RUN_DIR --onnx FILE`: the trained model as ONNX (checked by onnx's checker when installed)."""
from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

from ..cli import command, emit_json


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory with a trained model (model.pt)")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def export_onnx(run_dir: str | Path, path: str | Path, opset: int = 17) -> dict:
    """Write the model of `run_dir` to `path` (atomically) with a dynamic batch axis; returns a summary."""
    import torch

    from ..arch import load_arch
    from ..errors import ConfigError, RunError
    from ..runs import load_model

    model = load_model(run_dir).cpu().eval()
    arch = load_arch(run_dir)
    x = torch.zeros(1, *arch.net["input"])
    dest = Path(path)
    if dest.is_dir():
        raise ConfigError(f"--onnx {str(dest)!r} is a directory: give a file name like model.onnx")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            import onnxscript  # noqa: F401  (the dynamo exporter needs it)
            dynamo = True
        except ImportError:
            dynamo = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kw = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamo else \
                {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}
            torch.onnx.export(model, (x,), tmp, input_names=["input"], output_names=["logits"], opset_version=opset,
                              dynamo=dynamo, external_data=False, **kw)
        checked = False
        try:
            import onnx
        except ImportError:
            onnx = None
        if onnx is not None:
            try:
                onnx.checker.check_model(onnx.load(tmp), full_check=True)
            except Exception as e:  # onnx raises its own ValidationError types
                raise RunError(f"the exported model fails onnx's checker: {e}") from None
            checked = True
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return {"onnx": str(dest), "input": [None, *arch.net["input"]], "opset": opset, "checked": checked,
            "bytes": dest.stat().st_size}


@command("export", "export a trained model to ONNX", arguments)
def run(args: argparse.Namespace) -> int:
    info = export_onnx(args.run_dir, args.onnx, args.opset)
    if args.json:
        emit_json(info)
    else:
        note = "checked by onnx.checker" if info["checked"] else "not checked (pip install onnx to check it)"
        print(f"written: {info['onnx']} ({info['bytes'] / 1e6:.2f} MB, input {info['input']}, opset "
              f"{info['opset']}; {note})")
    return 0
