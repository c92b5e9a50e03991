"""Bad input never costs a user data, a traceback or a half-written run (the promise the README lists).

One parametrized test per class of bad input. Each case checks the exit code (2: refused), that
stderr is a single line without "Traceback", and that the --out directory is absent afterwards (or
byte-identical when it existed). The Python API's cases check for a one-line NASError instead of a
raw TypeError/AttributeError.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nas_common import Arch, Budget, Config, SearchMethod, SearchResult, Task, count_costs, get_dataset, save_arch
from nas_common.cli import main
from nas_common.errors import BudgetError, ConfigError, DataError, NASError
from nas_common.registry import register_method, unregister_method
from nas_common.search import run_search
from nas_common.train import TrainConfig, train_arch

MICRO = ["--preset", "tiny", "--epochs", "1", "--batch-size", "20"]


def tiny_resnet(width: int = 4, num_classes: int = 10) -> Arch:
    """A micro CIFAR ResNet whose first block's inner width is `width` (1e9: a mistaken huge width)."""
    spec = {"kind": "cifar", "block": "basic", "stem": 4, "depths": [1, 1, 1],
            "widths": [[[width, 4]], [[8, 8]], [[8, 8]]]}
    return Arch("resnet", spec, {"num_classes": num_classes, "input": [3, 32, 32]})


def write_npz(path: Path, n_train: int = 20, n_test: int = 10, **override: Any) -> Path:
    ds = get_dataset("cifar10-mini")
    arrays = {"x_train": ds.train.x[:n_train].permute(0, 2, 3, 1).numpy(), "y_train": ds.train.y[:n_train].numpy(),
              "x_test": ds.test.x[:n_test].permute(0, 2, 3, 1).numpy(), "y_test": ds.test.y[:n_test].numpy()}
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def nas(*args: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def snapshot(d: Path) -> dict[str, str] | None:
    if not d.exists():
        return None
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def refused(args: list, out_dir: Path | None, match: str) -> str:
    """`nas ARGS` exits 2 with one stderr line containing `match`, and leaves `out_dir` as it was."""
    before = snapshot(out_dir) if out_dir is not None else None
    code, _, err = nas(*args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and match in lines[0], err
    if out_dir is not None:
        assert snapshot(out_dir) == before, f"{out_dir} changed"
    return lines[0]


@pytest.fixture(scope="module", autouse=True)
def _plugins_loaded() -> None:
    """Load the space/arch entry points once, before any command: a broken plugin of another package
    (in a development checkout) warns then, not inside a refusal whose stderr must be one line."""
    import warnings

    from nas_common.registry import ARCHS, SPACES

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SPACES.names()
        ARCHS.names()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    save_arch(tiny_resnet(), d / "arch.json")
    save_arch(tiny_resnet(width=10**9), d / "huge.json")
    (d / "binary.json").write_bytes(bytes(range(256)) * 4)
    (d / "latin1.json").write_bytes('{"format": "nas-arch/1", "space": "r\xe9snet"}'.encode("latin-1"))
    (d / "binary.toml").write_bytes(b"\x00\xff\xfe" * 100)
    (d / "adir").mkdir()
    (d / "afile").write_text("not a directory\n")
    write_npz(d / "ok.npz")
    write_npz(d / "empty_test.npz", x_test=np.zeros((0, 32, 32, 3), np.uint8), y_test=np.zeros(0, np.int64))
    write_npz(d / "empty_train.npz", x_train=np.zeros((0, 32, 32, 3), np.uint8), y_train=np.zeros(0, np.int64))
    raw = (d / "ok.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (d / "notzip.npz").write_bytes(b"this is not a zip file\n" * 50)
    np.save(d / "single.npy", np.zeros((4, 4)))
    (d / "single.npz").write_bytes((d / "single.npy").read_bytes())
    obj = np.empty(20, dtype=object)
    obj[:] = [None] * 20
    write_npz(d / "object.npz", y_train=obj)
    with zipfile.ZipFile(d / "corrupt_member.npz", "w") as zf:  # a zip whose member is not an array
        for k in ("x_train", "y_train", "x_test", "y_test"):
            zf.writestr(f"{k}.npy", b"garbage")
    return {"d": d}


# ---- files: missing, a directory, binary, not UTF-8 ------------------------------------------------------
@pytest.mark.parametrize("make_args, match", [
    (lambda d: ["train", d / "missing.json", "--out", d / "o"], "does not exist"),
    (lambda d: ["train", d / "adir", "--out", d / "o"], "is a directory without an arch.json"),
    (lambda d: ["train", d / "binary.json", "--out", d / "o"], "is not UTF-8 text"),
    (lambda d: ["train", d / "latin1.json", "--out", d / "o"], "is not UTF-8 text"),
    (lambda d: ["cost", d / "binary.json"], "is not UTF-8 text"),
    (lambda d: ["train", "resnet20", "--config", d / "binary.toml", "--out", d / "o"], "is not UTF-8 text"),
    (lambda d: ["train", "resnet20", "--config", d / "adir", "--out", d / "o"], "is a directory"),
    (lambda d: ["train", "resnet20", "--config", d / "nowhere.toml", "--out", d / "o"], "does not exist"),
    (lambda d: ["train", "resnet20", "--dataset", f"npz:{d / 'adir'}", "--out", d / "o"], "is a directory"),
    (lambda d: ["train", "resnet20", "--dataset", f"npz:{d / 'none.npz'}", "--out", d / "o"], "does not exist"),
], ids=["arch-missing", "arch-dir", "arch-binary", "arch-latin1", "cost-binary", "config-binary", "config-dir",
        "config-missing", "npz-dir", "npz-missing"])
def test_bad_files(env: dict, make_args: Any, match: str) -> None:
    d = env["d"]
    refused(make_args(d), d / "o", match)
    assert not (d / "o").exists()


# ---- npz datasets: truncated, not a zip, one array, object arrays, empty splits -----------------------------
@pytest.mark.parametrize("name, match", [
    ("truncated.npz", "not a readable .npz"), ("notzip.npz", "not a readable .npz"),
    ("single.npz", "single array"), ("object.npz", "object array"), ("corrupt_member.npz", "x_train must be images"),
    ("empty_test.npz", "x_test holds no images"), ("empty_train.npz", "x_train holds no images"),
])
def test_bad_npz(env: dict, name: str, match: str) -> None:
    d = env["d"]
    refused(["train", d / "arch.json", "--dataset", f"npz:{d / name}", *MICRO, "--out", d / "o"], d / "o", match)
    refused(["search", "toy-bad", "--dataset", f"npz:{d / name}", "--out", d / "o"], d / "o", match)
    assert not (d / "o").exists()


def test_sparse_labels_warn(tmp_path: Path) -> None:
    y = np.arange(20) % 10
    y[0] = 999
    write_npz(tmp_path / "sparse.npz", y_train=y)
    with pytest.warns(UserWarning, match="labels run up to 999 but only 11 distinct"):
        ds = get_dataset(f"npz:{tmp_path / 'sparse.npz'}")
    assert ds.num_classes == 1000


# ---- sizes that cannot fit: counted on the meta device, refused before allocating -----------------------
def test_huge_network_is_costed_instantly_and_refused_for_training(env: dict) -> None:
    d = env["d"]
    t0 = time.perf_counter()
    code, out, err = nas("cost", d / "huge.json", "--json")
    took = time.perf_counter() - t0
    assert code == 0, err
    costs = json.loads(out)
    assert costs["params"] > 5e10 and costs["macs"] > 1e13
    assert took < 1.0, f"nas cost of a 1e9-wide network took {took:.2f} s"
    refused(["train", d / "huge.json", *MICRO, "--out", d / "o"], d / "o", "do not fit")
    refused(["cost", d / "huge.json", "--memory"], None, "do not fit")
    assert not (d / "o").exists()


def test_meta_costs_equal_the_real_ones() -> None:
    arch = tiny_resnet()
    assert count_costs(arch) == count_costs(arch.build(), (3, 32, 32))


# ---- output paths ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_args, match", [
    (lambda d: ["train", d / "arch.json", *MICRO, "--out", d / "afile" / "run"], "is a file"),
    (lambda d: ["train", d / "arch.json", *MICRO, "--out", d / "afile"], "cannot be a directory"),
    (lambda d: ["train", d / "arch.json", *MICRO, "--out", ""], "--out is empty"),
    (lambda d: ["train", d / "arch.json", *MICRO, "--out", d / "o", "--resume", "--overwrite"], "contradict"),
    (lambda d: ["search", "toy-bad", "--out", d / "afile" / "run"], "is a file"),
    (lambda d: ["export", d / "run", "--onnx", d / "afile" / "m.onnx"], "is a file, not a directory"),
    (lambda d: ["export", d / "run", "--onnx", d / "adir"], "is a directory"),
    (lambda d: ["export", d / "run", "--onnx", ""], "name the file"),
    (lambda d: ["export", d / "run", "--format", "pt2", "--output", d / "afile" / "m.pt2"], "is a file"),
], ids=["train-out-under-file", "train-out-is-file", "out-empty", "resume-overwrite", "search-out-under-file",
        "onnx-under-file", "onnx-is-dir", "onnx-empty", "pt2-under-file"])
def test_bad_output_paths(env: dict, trained: Path, make_args: Any, match: str) -> None:
    d = env["d"]
    before = snapshot(d / "afile")
    refused(make_args(d), d / "o", match)
    assert snapshot(d / "afile") == before and not (d / "o").exists()


@pytest.fixture(scope="module")
def trained(env: dict) -> Path:
    d = env["d"]
    code, _, err = nas("train", d / "arch.json", "--dataset", f"npz:{d / 'ok.npz'}", *MICRO, "--out", d / "run",
                       "-q")
    assert code == 0, err
    return d / "run"


# ---- seeds and other option values ---------------------------------------------------------------------
@pytest.mark.parametrize("extra, match", [
    (["--seed", "-1"], "--seed"), (["--seed", str(2**31)], "--seed"), (["--seed", "x"], "--seed"),
    (["-o", "optimizer=adam"], "optimizer='adam' is not one of"),
    (["-o", "nesterov=maybe"], "nesterov takes true or false"),
    (["--keep-best", "-1"], "keep must be an integer >= 0"),
])
def test_bad_option_values(env: dict, extra: list, match: str) -> None:
    d = env["d"]
    refused(["train", d / "arch.json", "--dataset", f"npz:{d / 'ok.npz'}", *MICRO, *extra, "--out", d / "o"],
            d / "o", match)


def test_dataset_and_arch_mismatch_is_refused_before_writing(env: dict, tmp_path: Path) -> None:
    d = env["d"]
    save_arch(tiny_resnet(num_classes=100), tmp_path / "c100.json")
    refused(["train", tmp_path / "c100.json", "--dataset", f"npz:{d / 'ok.npz'}", *MICRO, "--out", d / "o"],
            d / "o", "built for 100 classes")


# ---- run config files ----------------------------------------------------------------------------------------
def test_a_runs_own_config_toml_is_accepted_back(env: dict, trained: Path, tmp_path: Path) -> None:
    d = env["d"]
    code, _, err = nas("train", d / "arch.json", "--dataset", f"npz:{d / 'ok.npz'}", "--config",
                       trained / "config.toml", "--out", tmp_path / "again", "-q")
    assert code == 0, err
    import tomllib

    first = tomllib.loads((trained / "config.toml").read_text())
    again = tomllib.loads((tmp_path / "again" / "config.toml").read_text())
    assert again["config"] == first["config"]


def test_another_commands_config_toml_is_refused(env: dict, tmp_path: Path, toy_bad: type) -> None:
    d = env["d"]
    code, _, err = nas("search", "toy-bad", "--out", tmp_path / "s", "-q")
    assert code == 0, err
    refused(["train", d / "arch.json", "--config", tmp_path / "s" / "config.toml", "--out", d / "o"], d / "o",
            "is the config.toml of a `nas search toy-bad` run")


# ---- method refusals (SearchMethod.check) through the CLI ------------------------------------------------------
@dataclass(frozen=True)
class BadConfig(Config):
    epochs: int = 1
    refuse: str = ""
    PRESETS = {"paper": {}, "tiny": {}}


class ToyBad(SearchMethod):
    """Refuses what `-o refuse=...` says in check() (as BSN/posterior/TAS refuse infeasible budgets and NAT
    a missing --input-arch); otherwise a one-epoch search whose arch is over any macs budget."""

    name = "toy-bad"
    config_cls = BadConfig
    spaces = ("resnet",)
    budget_kinds = ("macs",)
    behaviour = ""

    def check(self, task: Task, config: BadConfig) -> None:
        super().check(task, config)
        if config.refuse == "budget":
            raise BudgetError("macs budget 1 is below the cheapest network (2e5): raise --budget-macs")
        if config.refuse == "input":
            raise ConfigError("--input-arch 'nowhere' does not exist: give an arch.json or a built-in name")

    def search(self, task: Task, config: BadConfig, run: Any) -> SearchResult:
        run.log(1, train_loss=float("nan"), valid_top1=1.0)
        if ToyBad.behaviour == "interrupt":
            raise KeyboardInterrupt
        if ToyBad.behaviour == "print":
            print("a method that prints to stdout")
        run.save_state(1)
        return SearchResult(self.name, state={"w": 1}, metrics={"loss": float("nan"), "inf": math.inf})

    def derive(self, result: SearchResult) -> Arch:
        return tiny_resnet()


@pytest.fixture(scope="module")
def toy_bad() -> Any:
    register_method(ToyBad.name, ToyBad)
    yield ToyBad
    unregister_method(ToyBad.name)


@pytest.fixture(autouse=True)
def _toy_registered(toy_bad: type) -> None:
    ToyBad.behaviour = ""


@pytest.mark.parametrize("extra, match", [
    (["-o", "refuse=budget", "--budget-macs", "1"], "below the cheapest"),
    (["-o", "refuse=input"], "--input-arch 'nowhere' does not exist"),
    (["--budget-params", "1e5"], "cannot honour a params budget"),
    (["--budget-macs", "-3"], "must be a positive number"),
    (["--preset", "huge"], "unknown preset"),
    (["--seed", "99999999999"], "--seed"),
])
def test_method_refusals_are_one_line_and_write_nothing(env: dict, extra: list, match: str) -> None:
    d = env["d"]
    refused(["search", "toy-bad", *extra, "--out", d / "o"], d / "o", match)
    assert not (d / "o").exists()


# ---- exit codes and --json --------------------------------------------------------------------------------------
def test_exit_codes_are_distinct_and_documented(tmp_path: Path) -> None:
    code, out, _ = nas("--help")
    assert code == 0 and "exit codes" in out and "130" in out and "over its budget" in out
    code, out, err = nas("search", "toy-bad", "--budget-macs", "10", "--out", tmp_path / "over", "--json")
    assert code == 3, err  # finished, over budget
    assert json.loads(out)["over_budget"]
    ToyBad.behaviour = "interrupt"
    code, _, err = nas("search", "toy-bad", "--out", tmp_path / "int")
    assert code == 130 and "interrupted" in err and "--resume" in err


def test_json_output_is_always_valid_json(tmp_path: Path) -> None:
    ToyBad.behaviour = "print"
    code, out, err = nas("search", "toy-bad", "--out", tmp_path / "s", "--json")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, out  # what the method printed went to stderr
    info = json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert info["metrics"]["loss"] is None and info["metrics"]["inf"] is None
    assert "a method that prints" in err


# ---- nas eval and nas export ------------------------------------------------------------------------------------
def test_eval_without_dataset_uses_the_runs_dataset(env: dict, trained: Path) -> None:
    code, out, err = nas("eval", trained, "--json")
    assert code == 0, err
    m = json.loads(out)
    assert m["dataset"].startswith("npz:") and m["n"] == 10  # ok.npz's 10 test images, not cifar10-mini's 500


def test_export_without_onnx_names_the_extra(env: dict, trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    line = refused(["export", trained, "--onnx", env["d"] / "m.onnx"], None, 'pip install "nas-common[onnx]"')
    assert "onnx" in line and not (env["d"] / "m.onnx").exists()


def test_opset_is_honest(env: dict, trained: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    refused(["export", trained, "--onnx", tmp_path / "m.onnx", "--opset", "99"], None, "--opset 99")
    assert not (tmp_path / "m.onnx").exists()
    code, out, err = nas("export", trained, "--onnx", tmp_path / "m.onnx", "--json")
    assert code == 0, err
    info = json.loads(out)
    real = next(o.version for o in onnx.load(tmp_path / "m.onnx").opset_import if o.domain in ("", "ai.onnx"))
    assert info["opset"] == real
    code, out, err = nas("export", trained, "--onnx", tmp_path / "m13.onnx", "--opset", "13", "--json")
    assert code == 0, err
    assert json.loads(out)["opset"] == 13


def test_export_pt2_program_computes_the_same_logits(trained: Path, tmp_path: Path) -> None:
    from nas_common import load_model

    code, out, err = nas("export", trained, "--format", "pt2", "--output", tmp_path / "m.pt2", "--json")
    assert code == 0, err
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    x = torch.randn(5, 3, 32, 32)  # another batch size: the batch axis is dynamic
    torch.testing.assert_close(program(x), load_model(trained)(x), rtol=1e-4, atol=1e-4)


# ---- ImageFolder: a corrupt image names its file --------------------------------------------------------------
def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    from PIL import Image

    for part in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "data" / part / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "data" / part / c / f"{i}.png")
    bad = tmp_path / "data" / "train" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    ds = get_dataset("imagefolder", data_dir=tmp_path / "data")
    from nas_common.data import make_loader

    for workers in (0, 1):
        loader = make_loader(ds.train, 6, train=False, num_workers=workers)
        with pytest.raises(DataError) as e:
            list(loader)
        assert "broken.png" in str(e.value) and "\n" not in str(e.value)


# ---- the Python API: one-line NASErrors, not TypeError/AttributeError ------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda: TrainConfig(epochs="3"), "epochs takes an integer"),
    (lambda: TrainConfig(optimizer="adam"), "optimizer='adam' is not one of 'sgd', 'adamw'"),
    (lambda: TrainConfig(milestones="150"), "milestones takes a list"),
    (lambda: TrainConfig(lr=None), "lr takes a number"),
    (lambda: BadConfig(epochs=1.5), "epochs takes an integer"),
    (lambda: Budget(macs="20e6"), "must be a positive number"),
    (lambda: Task(dataset="cifar10-mini"), "get_dataset"),
    (lambda: Task(get_dataset("cifar10-mini"), seed="0"), "seed"),
    (lambda: count_costs(tiny_resnet().build(), (32, 32)), "input_shape must be (C, H, W)"),
    (lambda: count_costs(tiny_resnet().build(), (1, 3, 32, 32)), "no batch dimension"),
    (lambda: count_costs("resnet20", (3, 32, 32)), "takes an nn.Module or an Arch"),
    (lambda: run_search("toy-bad", get_dataset("cifar10-mini"), out="x"), "run_search takes a Task"),
    (lambda: train_arch(tiny_resnet(), Task(get_dataset("cifar10-mini")), out="x"), "pass task.dataset"),
    (lambda: train_arch(tiny_resnet(), "cifar10-mini", out="x", seed=-1), "seed must be an integer"),
    (lambda: get_dataset(3), "a dataset is named by a string"),
])
def test_python_api_errors_are_one_line_nas_errors(call: Any, match: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NASError) as e:
        call()
    assert match in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()


def test_count_costs_takes_an_arch() -> None:
    assert count_costs(tiny_resnet()) == count_costs(tiny_resnet().build(), (3, 32, 32))
