"""Refusals through the `nas` command: one stderr line, exit status 2, nothing written."""
from __future__ import annotations

import pytest

from nas_common.cli import main

# (extra arguments, what the one-line message says)
REFUSALS = [
    (["--budget-macs", "1000"], "below the cheapest connected network"),
    (["--budget", "distributed:2=0.5"], "give at least --budget distributed:2=1 "),
    (["--budget", "bsn-paper=1000"], "give at least --budget bsn-paper="),
    (["-o", "epochs=0"], "untrained network"),
    (["--budget-distributed", "2:6"], "--budget distributed:K=STEPS"),
    (["--budget", "latency=1"], "cannot honour a latency budget"),
    (["-o", "batch_size=100000"], "exceeds the"),
    (["-o", "depth=9"], "not a CIFAR ResNet depth"),
    (["-o", "val_size=100000"], "val_size=100000 must be below"),
]


@pytest.mark.parametrize(("extra", "message"), REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_refusals_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, extra, message) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    # (1 epoch first, which `extra` may override: a refusal that failed would not search for minutes)
    code = main(["search", "bsn", "--dataset", "cifar10-mini", "--preset", "tiny", "--out", str(out),
                 "-o", "epochs=1", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0], lines[0]
    assert not out.exists(), "a refusal must come before the run directory is created"
