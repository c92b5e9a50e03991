"""The harness on fake fast methods (registered for subprocesses through NAS_EXTRA_METHODS)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKES = "fake=tools.bench.fake:FakeSearch,broken=tools.bench.fake:BrokenSearch"


def bench(out: Path, *args: str, **kw: object) -> subprocess.Popen:
    env = {**os.environ, "NAS_EXTRA_METHODS": FAKES, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tools.bench", "--preset", "micro", "--out", str(out), *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def rows(out: Path) -> list[dict]:
    p = out / "results.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


@pytest.mark.slow
def test_harness_writes_table_plot_and_records_failures(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    p = bench(out, "--methods", "fake,broken")
    log, _ = p.communicate(timeout=900)
    assert p.returncode == 0, log
    got = {r["key"]: r for r in rows(out)}
    assert set(got) == {"search/fake/s0", "search/broken/s0", "baseline/resnet20/s0", "retrain/fake/s0",
                        "random/fake-0/s0", "rank/fake/s0"}, log
    assert got["search/broken/s0"]["ok"] is False
    assert "this method always fails" in got["search/broken/s0"]["error"]
    assert got["retrain/fake/s0"]["ok"] and 0.0 <= got["retrain/fake/s0"]["test_acc"] <= 1.0
    assert got["retrain/fake/s0"]["macs"] == pytest.approx(got["search/fake/s0"]["macs"])
    for r in got.values():  # provenance on every row
        assert r["provenance"]["versions"]["torch"] and "config" in r
    md = (out / "results.md").read_text()
    assert "| fake " in md and "resnet20 (reference)" in md and "always fails" in md
    assert (out / "pareto.png").stat().st_size > 1000
    assert list((out / "jobs" / "retrain_fake_s0" / "tb").iterdir())  # TensorBoard logs per run
    # --report rebuilds table and plot from the jsonl alone
    (out / "results.md").unlink()
    (out / "pareto.png").unlink()
    r = subprocess.run([sys.executable, "-m", "tools.bench", "--report", str(out)], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert (out / "results.md").read_text() == md and (out / "pareto.png").exists()


@pytest.mark.slow
def test_killed_harness_resumes_without_redoing_rows(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    p = bench(out, "--methods", "fake")
    deadline = time.time() + 600
    while len(rows(out)) < 2 and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    before = {r["key"]: r["time"] for r in rows(out)}
    assert before, "nothing finished before the kill"
    p = bench(out, "--methods", "fake")
    log, _ = p.communicate(timeout=900)
    assert p.returncode == 0, log
    after = rows(out)
    counts = Counter(r["key"] for r in after)
    assert all(c == 1 for c in counts.values()), counts
    assert {r["key"]: r["time"] for r in after if r["key"] in before} == before
    assert "retrain/fake/s0" in counts and "rank/fake/s0" in counts


def test_unknown_method_is_one_line_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "tools.bench", "--methods", "nope", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown method" in r.stderr


def test_summary_aggregates_seeds() -> None:
    from tools.bench.report import summarize

    base = {"phase": "retrain", "method": "m", "label": "m", "ok": True, "space": "resnet", "macs": 1e6,
            "params": 1e3, "retrain_time_s": 1.0}
    s = summarize([{**base, "key": "retrain/m/s0", "seed": 0, "test_acc": 0.5},
                   {**base, "key": "retrain/m/s1", "seed": 1, "test_acc": 0.7},
                   {**base, "key": "retrain/m/s1", "seed": 1, "test_acc": 0.7}])  # duplicate key counts once
    assert len(s) == 1 and s[0]["n"] == 2
    assert s[0]["acc_mean"] == pytest.approx(0.6) and s[0]["acc_std"] == pytest.approx(0.1414, abs=1e-3)


def test_summary_says_why_tau_is_missing() -> None:
    from tools.bench.report import summarize

    def rank(method: str, **kw: object) -> dict:
        return {"phase": "rank", "method": method, "label": method, "ok": True, "key": f"rank/{method}/s0",
                "seed": 0, **kw}

    s = {e["name"]: e for e in summarize([
        rank("tied", kendall_tau=None, supernet_acc=[0.1, 0.1], standalone_acc=[0.2, 0.3]),
        rank("nohook", kendall_tau=None, note="method has no sample_and_score hook"),
        rank("ranked", kendall_tau=0.5)])}
    assert s["tied"]["notes"] == ["τ undefined: tied accuracies"] and s["tied"]["tau"] is None
    assert s["nohook"]["notes"] == ["τ undefined: no sample_and_score hook"]
    assert s["ranked"]["tau"] == pytest.approx(0.5) and s["ranked"]["notes"] == []
