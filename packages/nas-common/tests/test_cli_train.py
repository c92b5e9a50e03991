"""`nas train`, `nas eval`, `nas export` and `load_model`: the happy paths and one-line errors (exit 2)
that leave the run directory as it was."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nas_common import Arch, get_dataset, load_model, save_arch
from nas_common.cli import main
from nas_common.train import evaluate


def tiny_resnet(num_classes: int = 10, input_shape=(3, 32, 32)) -> Arch:
    spec = {"kind": "cifar", "block": "basic", "stem": 4, "depths": [1, 1, 1],
            "widths": [[[4, 4]], [[8, 8]], [[8, 8]]]}
    return Arch("resnet", spec, {"num_classes": num_classes, "input": list(input_shape)})


def make_npz(path: Path, classes: int = 10, per_class: int = 4, test_per_class: int = 2, grey_size: int | None = None
             ) -> Path:
    """A small .npz from cifar10-mini with every one of `classes` classes present (optionally grey HxH)."""
    ds = get_dataset("cifar10-mini")

    def pick(split, k):
        idx = torch.cat([torch.nonzero(split.y == c).flatten()[:k] for c in range(classes)])
        x = split.x[idx]
        if grey_size:
            x = torch.nn.functional.interpolate(x.float().mean(1, keepdim=True), size=grey_size).round().byte()
        return x.permute(0, 2, 3, 1).numpy(), split.y[idx].numpy()

    xtr, ytr = pick(ds.train, per_class)
    xte, yte = pick(ds.test, test_per_class)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path


def nas(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def snapshot(d: Path) -> dict[str, str]:
    if not d.exists():
        return {}
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    save_arch(tiny_resnet(), d / "arch.json")
    save_arch(tiny_resnet().replace(spec={**tiny_resnet().spec, "stem": 6}), d / "other.json")
    data = make_npz(d / "d10.npz")
    code, out, err = nas("train", d / "arch.json", "--dataset", f"npz:{data}", "--preset", "tiny", "--epochs", "1",
                         "--batch-size", "20", "--out", d / "run", "--json")
    assert code == 0, err
    return d, data, json.loads(out)


def test_train_prints_json_and_writes_the_run(env) -> None:
    d, _, info = env
    assert info["metrics"]["epochs"] == 1 and "test_top1" in info["metrics"]
    result = json.loads((d / "run/result.json").read_text())
    assert result["metrics"]["test_top1"] == info["metrics"]["test_top1"]
    assert result["dataset"].startswith("npz:") and result["provenance"]["seed"] == 0


def test_eval_reproduces_the_final_test_numbers(env) -> None:
    d, data, info = env
    code, out, err = nas("eval", d / "run", "--dataset", f"npz:{data}", "--json")
    assert code == 0, err
    m = json.loads(out)
    assert m["n"] == 20
    assert m["top1"] == pytest.approx(info["metrics"]["test_top1"])
    assert m["top5"] == pytest.approx(info["metrics"]["test_top5"])
    assert m["loss"] == pytest.approx(info["metrics"]["test_loss"], rel=1e-5)
    code, out, _ = nas("eval", d / "run", "--dataset", f"npz:{data}")
    assert code == 0 and "| top-1 |" in out


def test_load_model_returns_the_trained_network(env) -> None:
    d, data, info = env
    model = load_model(d / "run")
    assert not model.training
    m = evaluate(model, get_dataset(f"npz:{data}").test, device="cpu")
    assert m["top1"] == pytest.approx(info["metrics"]["test_top1"])


def test_export_onnx_is_checked_and_computes_the_same_logits(env, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    d, _, _ = env
    code, out, err = nas("export", d / "run", "--onnx", tmp_path / "sub" / "m.onnx", "--json")
    assert code == 0, err
    assert json.loads(out)["checked"] is True
    onnx.checker.check_model(onnx.load(tmp_path / "sub" / "m.onnx"))
    x = torch.randn(3, 3, 32, 32)  # a batch of 3: the batch axis is dynamic
    want = load_model(d / "run")(x).detach().numpy()
    got = ReferenceEvaluator(str(tmp_path / "sub" / "m.onnx")).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.endswith(".tmp")]


def test_builtin_name_is_sized_for_the_dataset(tmp_path) -> None:
    data = make_npz(tmp_path / "g5.npz", classes=5, per_class=4, test_per_class=2, grey_size=16)
    code, out, err = nas("train", "resnet20", "--dataset", f"npz:{data}", "--preset", "tiny", "--epochs", "1",
                         "--batch-size", "10", "--out", tmp_path / "r", "--json")
    assert code == 0, err
    arch = json.loads((tmp_path / "r/arch.json").read_text())
    assert arch["net"]["num_classes"] == 5 and arch["net"]["input"] == [1, 16, 16]
    assert load_model(tmp_path / "r")(torch.zeros(2, 1, 16, 16)).shape == (2, 5)


def test_adapt_rebuilds_an_arch_file_for_the_dataset(env, tmp_path) -> None:
    d, _, _ = env
    data = make_npz(tmp_path / "d5.npz", classes=5)
    code, _, err = nas("train", d / "arch.json", "--dataset", f"npz:{data}", "--preset", "tiny", "--epochs", "1",
                       "--batch-size", "10", "--out", tmp_path / "r", "--adapt", "--json")
    assert code == 0, err
    assert json.loads((tmp_path / "r/arch.json").read_text())["net"]["num_classes"] == 5


def test_teacher_run_directory_turns_on_distillation(env, tmp_path) -> None:
    d, data, _ = env
    code, out, err = nas("train", d / "other.json", "--dataset", f"npz:{data}", "--preset", "tiny", "--epochs", "1",
                         "--batch-size", "20", "--out", tmp_path / "s", "--teacher", d / "run", "--json")
    assert code == 0, err
    assert json.loads((tmp_path / "s/result.json").read_text())["teacher"] == str(d / "run")


# ---- bad input: one line, exit 2, nothing written ----------------------------------------------------

def _refused(args: list, out_dir: Path, match: str) -> None:
    before = snapshot(out_dir)
    existed = out_dir.exists()
    code, _, err = nas(*args)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nas ") and match in lines[0], err
    assert out_dir.exists() == existed and snapshot(out_dir) == before


def test_refuses_an_output_directory_holding_a_run(env) -> None:
    d, data, _ = env
    _refused(["train", d / "arch.json", "--dataset", f"npz:{data}", "--preset", "tiny", "--batch-size", "20",
              "--out", d / "run"], d / "run", "already holds a run")


def test_refuses_to_resume_another_architecture(env) -> None:
    d, data, _ = env
    _refused(["train", d / "other.json", "--dataset", f"npz:{data}", "--preset", "tiny", "--epochs", "1",
              "--batch-size", "20", "--out", d / "run", "--resume"], d / "run", "another architecture")


def test_refuses_to_resume_with_another_config(env) -> None:
    d, data, _ = env
    _refused(["train", d / "arch.json", "--dataset", f"npz:{data}", "--preset", "tiny", "--epochs", "2",
              "--batch-size", "20", "--out", d / "run", "--resume"], d / "run", "different config")


def test_refuses_a_dataset_with_other_classes(env, tmp_path) -> None:
    d, _, _ = env
    data = make_npz(tmp_path / "d5.npz", classes=5)
    _refused(["train", d / "arch.json", "--dataset", f"npz:{data}", "--out", tmp_path / "x"], tmp_path / "x",
             "built for 10 classes")
    _refused(["eval", d / "run", "--dataset", f"npz:{data}"], d / "run", "5 classes")


def test_refuses_a_dataset_with_another_input_shape(env, tmp_path) -> None:
    d, _, _ = env
    data = make_npz(tmp_path / "g.npz", grey_size=16)
    _refused(["train", d / "arch.json", "--dataset", f"npz:{data}", "--out", tmp_path / "x"], tmp_path / "x",
             "inputs [1, 16, 16]")


@pytest.mark.parametrize("extra,match", [
    (["--batch-size", "4096"], "fewer than one batch"),
    (["-o", "lr=-1"], "lr=-1.0 must be positive"),
    (["-o", "learning_rate=0.1"], "unknown config key"),
    (["--preset", "darts"], "unknown preset"),
    (["--teacher", "nowhere"], "--teacher"),
    (["--device", "cuda:7"], "device"),
])
def test_bad_options_are_refused_before_anything_is_written(env, tmp_path, extra, match) -> None:
    d, data, _ = env
    if "cuda" in " ".join(extra) and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    _refused(["train", d / "arch.json", "--dataset", f"npz:{data}", "--batch-size", "20", "--out", tmp_path / "x",
              *extra],
             tmp_path / "x", match)


def test_unknown_arch_name_and_missing_model(env, tmp_path) -> None:
    d, data, _ = env
    _refused(["train", "resnet21", "--dataset", f"npz:{data}", "--out", tmp_path / "x"], tmp_path / "x", "resnet2")
    (tmp_path / "empty").mkdir()
    _refused(["eval", tmp_path / "empty", "--dataset", f"npz:{data}"], tmp_path / "empty", "no trained model")
    _refused(["export", tmp_path / "empty", "--onnx", tmp_path / "m.onnx"], tmp_path / "empty", "no trained model")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_nas_console_command_end_to_end(tmp_path) -> None:
    """The installed `nas` entry point: train (progress off), eval, export, in real processes."""
    nas_bin = Path(sys.executable).parent / "nas"
    if not nas_bin.exists():
        pytest.skip("the nas console script is not installed in this environment")
    save_arch(tiny_resnet(), tmp_path / "arch.json")
    data = make_npz(tmp_path / "d.npz")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NAS_INTERRUPT_AFTER_EPOCH", None)

    last_err = []

    def run(*a: str) -> str:
        p = subprocess.run([str(nas_bin), *map(str, a)], env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        last_err[:] = p.stderr.splitlines()
        return p.stdout

    out = run("train", tmp_path / "arch.json", "--dataset", f"npz:{data}", "--preset", "tiny", "--epochs", "2",
              "--batch-size", "20", "--out", tmp_path / "r")
    assert "nas train" in out and "| epochs |" in out
    # no terminal: no bars, but one log line per epoch on stderr
    epochs = [ln for ln in last_err if " step " in ln and "train/loss" in ln]
    assert [ln.split(" step ")[1].split(":")[0] for ln in epochs] == ["1", "2"], last_err
    run("train", tmp_path / "arch.json", "--dataset", f"npz:{data}", "--preset", "tiny", "--epochs", "1",
        "--batch-size", "20", "--out", tmp_path / "q", "-q")
    assert not [ln for ln in last_err if " step " in ln], last_err
    ev = json.loads(run("eval", tmp_path / "r", "--dataset", f"npz:{data}", "--json"))
    assert ev["top1"] == pytest.approx(json.loads((tmp_path / "r/result.json").read_text())["metrics"]["test_top1"])
    assert "checked by onnx.checker" in run("export", tmp_path / "r", "--onnx", tmp_path / "m.onnx")
