"""The prepared GPU run (tools/bench/gpu.py) at micro size on the CPU, so that it cannot rot while no GPU
is at hand: every section produces its rows, search steps are observed through the contract's step
markers (timed, stopped after the timed ones, a host sync inside one is named), and what cannot run
says why."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

FAKES = ("fake=tools.bench.fake:FakeSearch,fake-sync=tools.bench.fake:SyncSearch,"
         "broken=tools.bench.fake:BrokenSearch")


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> object:
    """The fake methods, registered in this process for the test only."""
    import torch

    from nas_common.registry import METHODS

    monkeypatch.setenv("NAS_EXTRA_METHODS", FAKES)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for name in ("fake", "fake-sync", "broken"):
        METHODS.unregister(name)


def rows_of(path: Path) -> dict[str, dict]:
    return {r["benchmark"]: r for r in json.loads(path.read_text())["rows"]}


def test_micro_run_on_the_cpu_fills_every_row(fakes: object, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    from tools.bench.gpu import HEADERS, MICRO, main

    out = tmp_path / "gpu.json"
    assert main(["--device", "cpu", "--micro", "--methods", "fake,fake-sync,broken", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("### tools.bench.gpu"):]  # one table after the progress lines
    assert all(h in table.splitlines()[2] for h in HEADERS) and table.count("search step: fake ") == 1
    rows = rows_of(out)
    fake = rows["search step: fake"]
    # the tiny fake runs 4 steps; the script stops it after warm-up + timed steps
    assert fake["error"] is None and fake["data"]["outcome"] == "stopped"
    assert fake["data"]["steps_seen"] == MICRO.warmup + MICRO.steps and len(fake["data"]["step_times_s"]) == MICRO.steps
    assert fake["data"]["median_step_s"] > 0 and "no sync" in fake["notes"]
    sync = rows["search step: fake-sync"]  # .item() inside its steps
    assert sync["error"].startswith("host-device sync inside step 2") and "_local_scalar_dense" in sync["error"]
    assert "this method always fails" in rows["search step: broken"]["error"]
    if importlib.util.find_spec("ista_nas") is not None:
        d = rows["DARTS dense supernet step (alpha + w)"]["data"]
        assert d["sparse_step_s"] > 0 and d["dense_step_s"] > 0 and d["dense_mib"] > d["sparse_mib"] > 0
    else:
        assert "not installed" in rows["ISTA-NAS sparse vs dense supernet"]["notes"]
    trainer = rows["Trainer bf16 + channels_last"]["data"]
    assert min(trainer.values()) > 0 and set(trainer) == {
        "plain_images_per_s", "trainer_fp32_images_per_s", "trainer_bf16_cl_images_per_s"}
    assert rows["DeviceLoader (train, augmented)"]["data"]["images_per_s"] > 0
    ddp = rows["DDP search step (2 processes)"]
    assert ddp["result"] == "skipped" and "needs two GPUs" in ddp["notes"]


def test_a_method_that_marks_no_step_is_capped_and_says_so(fakes: object) -> None:
    import torch

    from tools.bench.gpu import MICRO, search_step_row, synthetic_cifar

    ds = synthetic_cifar(64, 32)
    row = search_step_row("fake", ds, torch.device("cpu"), MICRO, cap_s=1.0, overrides={"steps": 0, "sleep_s": 30})
    assert row.data["outcome"] == "capped" and row.data["wall_s"] < 20
    assert row.error.startswith("no search step marked") and "time cap 1 s" in row.error
    done = search_step_row("fake", ds, torch.device("cpu"), MICRO, cap_s=60.0, overrides={"steps": 1, "sleep_s": 0})
    assert done.data["outcome"] == "finished" and "the search ended after 1 step(s)" in done.notes


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture) -> None:
    from tools.bench.gpu import main

    assert main(["--device", "cpu", "--micro", "-o", "no-colon=1"]) == 2
    assert main(["--device", "cpu", "--micro", "--sections", "search,nope"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "METHOD:KEY=VALUE" in err[0] and "unknown --sections nope" in err[1]


@pytest.mark.slow
def test_two_process_row_on_the_cpu(fakes: object, tmp_path: Path) -> None:
    """The DDP row's torchrun path, with gloo on the CPU (`--ddp on`), against the 1-process steps."""
    from tools.bench.gpu import main

    out = tmp_path / "gpu.json"
    assert main(["--device", "cpu", "--micro", "--methods", "fake", "--sections", "search,ddp", "--ddp", "on",
                 "--out", str(out)]) == 0
    row = rows_of(out)["DDP search step: fake"]
    assert row["error"] is None, row
    assert len(row["data"]["step_times_s"]) == 2 and row["ratio"].endswith("x 1 process")
