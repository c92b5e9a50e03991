"""The harness on fake fast methods (registered for subprocesses through NAS_EXTRA_METHODS): the evidence
protocol's jobs, resuming, its data records, the estimate, and the dependency check."""
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
    env = {**os.environ, "NAS_EXTRA_METHODS": FAKES, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
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
                        "random/fake-0/s0", "reference/fake/s0", "rs/fake/s0", "rank/fake/s0"}, log
    assert got["search/broken/s0"]["ok"] is False
    assert "this method always fails" in got["search/broken/s0"]["error"]
    assert got["retrain/fake/s0"]["ok"] and 0.0 <= got["retrain/fake/s0"]["test_acc"] <= 1.0
    assert got["retrain/fake/s0"]["macs"] == pytest.approx(got["search/fake/s0"]["macs"])
    for r in got.values():  # provenance on every row
        assert r["provenance"]["versions"]["torch"] and "config" in r
    for key in ("random/fake-0/s0", "reference/fake/s0", "rs/fake/s0"):  # baselines at the found MACs
        assert got[key]["ok"] and got[key]["within_tolerance"], got[key].get("error")
        assert abs(got[key]["macs"] / got["retrain/fake/s0"]["macs"] - 1) <= 0.05
    assert got["reference/fake/s0"]["reference"] == "resnet56"
    rs = got["rs/fake/s0"]  # random search spent the fake's search time (1 s) on at least one candidate
    assert rs["time_budget_s"] == pytest.approx(got["search/fake/s0"]["search_time_s"])
    assert rs["rs_candidates"] == len(rs["rs_val_accs"]) >= 1 and rs["selected_on"]["split"] == "val"
    # an estimate before the first job, a progress line per job
    lines = log.splitlines()
    first_job = next(i for i, ln in enumerate(lines) if ln.strip().startswith("[1/"))
    assert any(ln.startswith("estimate: ~") for ln in lines[:first_job]), log
    assert sum(ln.strip().startswith("[") and "elapsed" in ln for ln in lines) == len(got)
    md = (out / "results.md").read_text()
    assert "| fake " in md and "resnet20 (unscaled)" in md and "always fails" in md and "resnet56 scaled" in md
    assert (out / "pareto.png").stat().st_size > 1000
    assert list((out / "jobs" / "retrain_fake_s0" / "tb").iterdir())  # TensorBoard logs per run
    # --report rebuilds table and plot from the jsonl alone
    (out / "results.md").unlink()
    (out / "pareto.png").unlink()
    r = subprocess.run([sys.executable, "-m", "tools.bench", "--report", str(out)], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert (out / "results.md").read_text() == md and (out / "pareto.png").exists()


def write_npz(path: Path, n_train: int = 96, n_test: int = 40) -> Path:
    """Arrays of another shape and class count than CIFAR-10 (16x16 pixels, 4 classes)."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 255, (n_train, 16, 16, 3), dtype=np.uint8),
             y_train=rng.integers(0, 4, n_train), x_test=rng.integers(0, 255, (n_test, 16, 16, 3), dtype=np.uint8),
             y_test=rng.integers(0, 4, n_test))
    return path


@pytest.mark.slow
def test_killed_evidence_run_on_npz_data_resumes_without_redoing_rows(tmp_path: Path) -> None:
    """The evidence protocol on the user's own arrays: killed mid-way, resumed, every job once; every row
    says which data and which split judged it."""
    npz = write_npz(tmp_path / "mine.npz")
    out = tmp_path / "bench"
    args = ("--methods", "fake", "--dataset", f"npz:{npz}")
    p = bench(out, *args)
    deadline = time.time() + 600
    while len(rows(out)) < 4 and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    before = {r["key"]: r["time"] for r in rows(out)}
    assert len(before) >= 4, "too little finished before the kill"
    p = bench(out, *args)
    log, _ = p.communicate(timeout=900)
    assert p.returncode == 0, log
    assert f"({len(before)} rows already done)" in log
    after = rows(out)
    counts = Counter(r["key"] for r in after)
    assert all(c == 1 for c in counts.values()), counts
    assert {r["key"]: r["time"] for r in after if r["key"] in before} == before
    assert {"retrain/fake/s0", "random/fake-0/s0", "reference/fake/s0", "rs/fake/s0", "rank/fake/s0"} <= set(counts)
    judged = [r for r in after if r["phase"] in ("retrain", "random", "reference", "rs", "baseline")]
    assert judged and all(r["ok"] for r in judged), [r.get("error") for r in judged]
    from tools.bench.presets import PRESETS

    n_test = min(40, PRESETS["micro"].n_test)  # the preset takes the first n_test test images
    assert {json.dumps(r["judged_on"], sort_keys=True) for r in judged} == {json.dumps(
        {"dataset": f"npz:{npz}", "split": "test", "n": n_test, "fingerprint": judged[0]["judged_on"]["fingerprint"]},
        sort_keys=True)}
    search = next(r for r in after if r["key"] == "search/fake/s0")
    assert search["held_out_for_method"]["split"] == "val" and search["arch"]["net"]["input"] == [3, 16, 16]
    assert f"`npz:{npz}` split `test`, {n_test} images" in (out / "results.md").read_text()


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


def test_missing_dependency_is_a_one_line_error_before_any_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from tools.bench.__main__ import main

    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy now raises ImportError
    out = tmp_path / "bench"
    assert main(["--preset", "micro", "--methods", "all", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scipy" in err and 'pip install "nas-common[bench]"' in err
    assert not out.exists()  # nothing ran, nothing was written


def test_random_search_spends_the_budget_keeps_the_best_and_resumes() -> None:
    from tools.bench.jobs import random_search

    now = [0.0]
    accs = [0.3, 0.7, 0.5, 0.6, 0.1, 0.9, 0.2]
    drawn: list[int] = []

    def sample(i: int) -> dict:
        drawn.append(i)
        now[0] += 100.0  # matching the MACs is the harness's work: it does not count against the budget
        return {"i": i}

    def score(i: int, cand: dict) -> float:
        now[0] += 10.0  # every candidate takes 10 s
        return accs[i]

    cands = random_search(sample, score, budget_s=42.0, clock=lambda: now[0])
    # 4 candidates (40 s) and not a fifth: 40 + 10/2 > 42 would be further from the budget
    assert [c["index"] for c in cands] == [0, 1, 2, 3] and sum(c["seconds"] for c in cands) == 40.0
    assert all(c["sample_seconds"] == 100.0 for c in cands)
    assert max(cands, key=lambda c: c["val_acc"])["index"] == 1
    drawn.clear()
    more = random_search(sample, score, budget_s=62.0, done=cands[:3], clock=lambda: now[0])
    assert drawn == [3, 4, 5] and len(more) == 6  # the finished candidates are not redone
    assert random_search(sample, score, budget_s=0.0, clock=lambda: now[0])  # at least one candidate


def test_estimate_schedules_longest_first_and_sizes_the_evidence_preset() -> None:
    from tools.bench.estimate import CostModel, makespan
    from tools.bench.harness import Harness

    # longest first, each on the first free worker: 5 | 4, then 3 on the 4, 3 on the 5, 3 on the 7
    assert makespan([3, 5, 3, 4, 3], 2) == 10.0 and makespan([], 2) == 0.0 and makespan([7, 1], 1) == 8.0
    model = CostModel.fit()
    assert model.train_s("darts", 10, 1000, 2) > model.train_s("darts", 5, 1000, 2) > model.train_s("darts", 5, 500, 2)
    assert model.search_s("nat", 4660) > model.search_s("nat", 1000)
    # a method that never ran is planned in the first space it declares (SearchMethod.spaces)
    assert model.found("never-ran", spaces=("darts", "resnet"))[0] == "darts"
    assert model.found("never-ran")[0] == "resnet"
    h = Harness("evidence", "/nonexistent/out", methods="all", jobs=2, quiet=True)
    assert h.preset.random_per_space >= 5 and h.preset.rank_samples >= 8 and h.preset.reference
    est = h.estimate()
    kinds = est["by_kind"]
    n_pairs = len(h.methods) * len(h.seeds)
    assert len(h.seeds) >= 3 and kinds["random"][0] == 5 * n_pairs and kinds["rs"][0] == n_pairs
    assert kinds["reference"][0] == n_pairs and kinds["rank"][0] == len(h.methods)
    assert Harness("evidence", "/nonexistent/out", methods="all", jobs=1, quiet=True).estimate()["seconds"] > \
        1.6 * est["seconds"]


def test_the_estimate_predicts_the_committed_evidence_runs_job_times() -> None:
    """The cost model against the jobs of the evidence run in docs/bench/evidence, planned with the
    networks that run found: each kind's predicted seconds within 25% of the measured ones."""
    from tools.bench.estimate import CostModel
    from tools.bench.harness import Harness
    from tools.bench.results import read_rows

    rows = read_rows(ROOT / "docs" / "bench" / "evidence")
    h = Harness("evidence", "/nonexistent/out", methods="all", jobs=2, quiet=True)
    h.rows = rows  # plan the follow-ups with the networks the run found
    predicted = {j["key"]: t for _, j, t in h.plan(CostModel.fit())}
    # a resumed random search's row counts only the time after the resume
    measured = {r["key"]: float(r["job_wall_s"]) for r in rows if r.get("ok") and r["key"] in predicted
                and not (r["phase"] == "rs" and r["job_wall_s"] < r["rs_spent_s"])}
    by: dict[str, list[float]] = {}
    for key, secs in measured.items():
        kind = key.split("/")[0]
        by.setdefault(kind, [0.0, 0.0])
        by[kind][0] += predicted[key]
        by[kind][1] += secs
    assert {"search", "rs", "random", "reference", "retrain", "rank"} <= set(by), by
    assert all(0.75 < pred / meas < 1.25 for pred, meas in by.values()), by


def test_the_evidence_preset_fits_two_hours_with_two_jobs() -> None:
    from tools.bench.harness import Harness

    est = Harness("evidence", "/nonexistent/out", methods="all", jobs=2, quiet=True).estimate()
    assert est["seconds"] < 2 * 3600, est


def test_data_views_and_records_of_an_image_folder(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from nas_common.data.datasets import imagefolder
    from tools.bench.jobs import data_views, search_dataset, split_record

    rng = np.random.default_rng(0)
    for part, n in (("train", 5), ("val", 2)):
        for c in ("cat", "dog"):
            (tmp_path / part / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / part / c / f"{i}.png")
    ds = imagefolder(tmp_path, image_size=16)
    v = data_views(ds, val_fraction=0.2, split_seed=0)
    assert (len(v["train"]), len(v["fit"]), len(v["val"]), len(v["test"])) == (10, 8, 2, 4)
    assert search_dataset(ds, v).test is v["val"]  # a search never sees the test images
    rec = {k: split_record(ds, v[k], k) for k in ("fit", "val", "test")}
    assert rec["test"] == {"dataset": "imagefolder", "split": "test", "n": 4, "fingerprint": rec["test"]["fingerprint"]}
    assert len({r["fingerprint"] for r in rec.values()}) == 3
    assert data_views(ds, 0.2, 0)["val"].indices.tolist() == v["val"].indices.tolist()  # the same part every time


def test_a_line_cut_by_a_kill_does_not_swallow_the_next_row(tmp_path: Path) -> None:
    from tools.bench.harness import append_row, read_rows

    (tmp_path / "results.jsonl").write_text('{"key": "a", "ok": true}\n{"key": "b", "o')  # killed mid-write
    append_row(tmp_path, {"key": "c", "ok": True})
    assert [r["key"] for r in read_rows(tmp_path)] == ["a", "c"]


@pytest.mark.parametrize(("preset", "says_wiring_only"), [("smoke", True), ("micro", True), ("evidence", False)])
def test_smoke_results_say_their_accuracies_check_the_wiring_only(tmp_path: Path, preset: str,
                                                                  says_wiring_only: bool) -> None:
    """`make demo` runs the smoke preset: its table must not read as evidence about the methods."""
    from tools.bench.report import write_report

    row = {"key": "retrain/m/s0", "phase": "retrain", "method": "m", "label": "m", "seed": 0, "ok": True,
           "space": "resnet", "macs": 1e6, "params": 1e3, "retrain_time_s": 1.0, "test_acc": 0.5,
           "preset": preset, "dataset": "cifar10-mini", "provenance": {"device_name": "cpu"}}
    s = write_report(tmp_path, [row])
    md = (tmp_path / "results.md").read_text()
    assert ("accuracies check the wiring only" in md) is says_wiring_only
    assert ("wiring only" in s["note"]) is says_wiring_only


def test_tools_bench_has_no_import_cycles() -> None:
    """No module of tools/bench imports, at module level or inside a function, one that imports it back
    (directly or through others): each concept depends one way."""
    import ast

    bench = ROOT / "tools" / "bench"
    mods = {f.stem for f in bench.glob("*.py")}

    def imports(path: Path) -> set[str]:
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                out |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tools.bench."):
                out.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                out |= {a.name.split(".")[2] for a in node.names if a.name.startswith("tools.bench.")}
        return out & mods

    graph = {m: imports(bench / f"{m}.py") - {m} for m in mods}
    assert graph["report"] and graph["harness"], graph  # the walker sees imports

    def reaches(a: str, b: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph[a])

    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a in mods for b in graph[a] if reaches(b, a))
    assert not cycles, cycles


def test_follow_ups_are_only_those_of_the_methods_and_seeds_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--methods bsn` on results that also hold a nat search must not retrain nat's network (or seeds
    the run does not name): that waits for a run that names them."""
    from tools.bench.harness import Harness

    h = Harness("evidence", "/nonexistent/out", methods="bsn,tas", seeds=(0, 1), jobs=2, quiet=True)
    search = {"phase": "search", "ok": True, "arch": {}, "search_time_s": 1.0, "config": {"out": "x"}}
    h.rows = [{**search, "method": m, "seed": s, "key": f"search/{m}/s{s}"}
              for m, s in [("bsn", 0), ("nat", 0), ("tas", 1), ("bsn", 2), ("tas", 0)]]
    h.rows.append({**search, "ok": False, "method": "bsn", "seed": 1, "key": "search/bsn/s1"})
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(h, "followups_of", lambda m, s, *a: calls.append((m, s)) or [])
    h.followup_jobs()
    assert sorted(calls) == [("bsn", 0), ("tas", 0), ("tas", 1)]


def test_an_out_holding_another_protocols_rows_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """Resuming skips jobs by key: rows of another preset, dataset, budget or preset version in --out would
    be mixed into this run's table, so the harness refuses, naming both, and writes nothing."""
    import dataclasses

    from nas_common.errors import ConfigError
    from tools.bench.harness import Harness, append_row
    from tools.bench.presets import PRESETS

    smoke = Harness("smoke", tmp_path, methods="bsn", quiet=True)
    append_row(tmp_path, {"key": "search/bsn/s0", "phase": "search", "ok": True, "preset": "smoke",
                          "dataset": "cifar10-mini", "run_digest": smoke.digest})
    before = sorted(p.name for p in tmp_path.iterdir()), (tmp_path / "results.jsonl").read_bytes()
    assert Harness("smoke", tmp_path, methods="bsn", quiet=True).done == {"search/bsn/s0"}  # same protocol: resumes
    for kwargs in ({"preset": "micro"}, {"preset": "smoke", "budget_macs": 1e6},
                   {"preset": "smoke", "dataset": "npz:/elsewhere.npz"},
                   {"preset": dataclasses.replace(PRESETS["smoke"], random_per_space=3)}):  # the preset resized
        with pytest.raises(ConfigError, match="another protocol") as e:
            Harness(kwargs.pop("preset"), tmp_path, methods="bsn", quiet=True, **kwargs)
        assert "preset 'smoke'" in str(e.value) and "another --out" in str(e.value)
    assert (sorted(p.name for p in tmp_path.iterdir()), (tmp_path / "results.jsonl").read_bytes()) == before
    # rows written before digests existed are checked on preset and dataset only
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    append_row(legacy, {"key": "search/bsn/s0", "phase": "search", "ok": True, "preset": "smoke",
                        "dataset": "cifar10-mini"})
    assert Harness("smoke", legacy, methods="bsn", quiet=True).done == {"search/bsn/s0"}
    with pytest.raises(ConfigError, match="another protocol"):
        Harness("micro", legacy, methods="bsn", quiet=True)


def test_a_report_of_rows_made_at_several_commits_names_each(tmp_path: Path) -> None:
    from tools.bench.report import write_report

    def row(key: str, commit: str) -> dict:
        return {"key": key, "phase": "retrain", "method": "m", "label": "m", "seed": int(key[-1]), "ok": True,
                "space": "resnet", "macs": 1e6, "params": 1e3, "retrain_time_s": 1.0, "test_acc": 0.5,
                "preset": "evidence", "dataset": "cifar10-mini",
                "provenance": {"device_name": "cpu", "git_commit": commit}}

    write_report(tmp_path, [row("retrain/m/s0", "a" * 40), row("retrain/m/s1", "b" * 40 + "-dirty")])
    head = (tmp_path / "results.md").read_text().splitlines()[2]
    assert "2 git commits (aaaaaaa, bbbbbbb-dirty;" in head
    write_report(tmp_path, [row("retrain/m/s0", "a" * 40)])
    assert f"git {'a' * 40}" in (tmp_path / "results.md").read_text()
    bare = {k: v for k, v in row("retrain/m/s0", "a" * 40).items() if k != "provenance"}
    write_report(tmp_path, [bare])  # rows without provenance: the commit is unknown, not an error
    assert "git ?" in (tmp_path / "results.md").read_text()


def test_a_failed_job_runs_again_on_resume_and_its_new_row_supersedes_the_failure(tmp_path: Path) -> None:
    """A job that failed (a bug since fixed, a killed worker) is not done: a resumed run schedules it
    again, and its new row replaces the failed one in what the report reads; the file keeps both."""
    from tools.bench.harness import Harness, append_row, read_rows

    digest = Harness("smoke", tmp_path, methods="bsn", quiet=True).digest
    common = {"phase": "search", "preset": "smoke", "dataset": "cifar10-mini", "run_digest": digest}
    append_row(tmp_path, {"key": "search/bsn/s0", "ok": False, "error": "boom", **common})
    append_row(tmp_path, {"key": "search/bsn/s1", "ok": True, **common})
    h = Harness("smoke", tmp_path, methods="bsn", quiet=True)
    assert h.done == {"search/bsn/s1"}
    h._on_done({"key": "search/bsn/s0", "seed": 0, "dataset": "cifar10-mini", "method": "bsn"},
               {"ok": True, "macs": 1e6})
    assert h.done == {"search/bsn/s0", "search/bsn/s1"}
    for rows in (h.rows, read_rows(tmp_path)):
        assert [(r["key"], r["ok"]) for r in rows] == [("search/bsn/s1", True), ("search/bsn/s0", True)]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 3
