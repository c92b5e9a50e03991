"""`nas cost`: JSON output, text output, --input, --memory/--latency, --all, one-line errors with exit 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nas_common.arch import list_archs, save_arch
from nas_common.cli import main
from nas_common.spaces.resnet import resnet_arch


def run(capsys, *argv):
    code = main(["cost", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_costs_of_resnet56(capsys):
    code, out, err = run(capsys, "resnet56", "--json")
    assert code == 0 and err == ""
    assert json.loads(out) == {"macs": 125_747_840, "params": 855_770}


def test_text_output_says_macs_are_what_papers_call_flops(capsys):
    code, out, _ = run(capsys, "resnet20")
    assert code == 0
    assert "MACs (multiply-accumulates, what papers call FLOPs): 40,813,184" in out
    assert "params: 272,474" in out and "ResNet-20" in out


def test_input_shape_option(capsys):
    code, out, _ = run(capsys, "resnet20", "--input", "3x64x64", "--json")
    assert code == 0
    assert json.loads(out)["macs"] == 4 * 40_813_184 - 3 * 640  # 4x the convs; the classifier stays
    code, _, err = run(capsys, "resnet20", "--input", "3x64")
    assert code == 2 and "--input must be CxHxW" in err


def test_memory_and_latency(capsys):
    code, out, _ = run(capsys, "resnet20", "--memory", "--latency", "--repeats", "1", "--warmup", "0", "--json")
    assert code == 0
    c = json.loads(out)
    assert c["memory"] > 4 * c["params"] and c["latency"] > 0


def test_arch_file(capsys, tmp_path):
    arch = resnet_arch(20)
    arch.spec["depths"] = [1, 1, 1]
    path = save_arch(arch, tmp_path / "arch.json")
    code, out, _ = run(capsys, str(path), "--json")
    assert code == 0 and json.loads(out)["params"] < 100_000


def test_unknown_name_exits_2_with_did_you_mean(capsys):
    code, out, err = run(capsys, "resnet57")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "did you mean 'resnet56'" in err


@pytest.mark.parametrize("spec_patch,field", [
    ({"widths": [[[16, 16]], [[32, -1]], [[64, 64]]]}, "spec.widths[1][0][1]"),
    ({"kind": "svhn"}, "spec.kind"),
    ({"depths": [1, 1]}, "spec.widths"),
])
def test_malformed_arch_json_exits_2_naming_the_field(capsys, tmp_path, spec_patch, field):
    spec = {"kind": "cifar", "block": "basic", "stem": 16, "depths": [1, 1, 1],
            "widths": [[[16, 16]], [[32, 32]], [[64, 64]]], **spec_patch}
    p = tmp_path / "arch.json"
    p.write_text(json.dumps({"format": "nas-arch/1", "space": "resnet", "spec": spec,
                             "net": {"num_classes": 10, "input": [3, 32, 32]}}))
    code, out, err = run(capsys, str(p))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and field in err and str(p) in err


def test_broken_json_and_missing_file_exit_2(capsys, tmp_path):
    p = tmp_path / "arch.json"
    p.write_text("{not json")
    code, _, err = run(capsys, str(p))
    assert code == 2 and "not valid JSON" in err
    code, _, err = run(capsys, str(tmp_path / "missing.json"))
    assert code == 2 and "does not exist" in err


def test_no_name_and_both_name_and_all_exit_2(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "--all" in err
    code, _, err = run(capsys, "resnet20", "--all")
    assert code == 2
    code, _, err = run(capsys, "resnet20", "--latency", "--repeats", "0")
    assert code == 2 and "--repeats must be >= 1" in err


@pytest.mark.slow
def test_all_prints_a_row_per_builtin_arch(capsys):
    code, out, _ = run(capsys, "--all")
    assert code == 0
    assert "what papers call FLOPs" in out
    for name in list_archs():
        assert f"| {name} |" in out
    assert "| resnet56 | resnet | 3x32x32 | 125.7M (125.5M) | 0.856M (0.85M) |" in out


@pytest.mark.slow
def test_console_script_end_to_end():
    proc = subprocess.run([sys.executable, "-m", "nas_common.cli", "cost", "resnet32", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["params"] == 466_906
    proc = subprocess.run([sys.executable, "-m", "nas_common.cli", "cost", "resnet-32"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("nas cost: error:")
