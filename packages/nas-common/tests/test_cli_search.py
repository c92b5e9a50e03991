from __future__ import annotations

from pathlib import Path

import pytest

from nas_common.cli import main


def test_unknown_method_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "no-such-method", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown method 'no-such-method'" in err
    assert not (tmp_path / "r").exists()


def test_bad_distributed_budget_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "bsn", "--budget-distributed", "two", "--out", str(tmp_path / "r")]) == 2
    assert "--budget distributed:K=STEPS" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bad_budget_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "tas", "--budget-macs", "-5", "--out", str(tmp_path / "r")]) == 2
    assert "must be a positive number" in capsys.readouterr().err
