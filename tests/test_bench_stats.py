"""The harness's statistics on constructed rows with known answers (tools/bench/stats.py, report.py)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("scipy")


def row(phase: str, method: str, seed: int, acc: float, i: int = 0, **kw: object) -> dict:
    key = f"{phase}/{method}-{i}/s{seed}" if phase == "random" else f"{phase}/{method}/s{seed}"
    return {"key": key, "phase": phase, "method": method, "label": f"{phase} {method}", "seed": seed, "ok": True,
            "test_acc": acc, "space": "resnet", "macs": 1e6, "params": 1e3, "retrain_time_s": 1.0, **kw}


def scenario(method: str, mine: list[float], base: list[float]) -> list[dict]:
    """Method accuracies per seed; each baseline at `base` per seed (random: 5 archs spread around it)."""
    rows = []
    for s, (a, b) in enumerate(zip(mine, base, strict=True)):
        rows.append(row("retrain", method, s, a))
        rows += [row("random", method, s, b + d, i=i) for i, d in enumerate((-0.02, -0.01, 0.0, 0.01, 0.02))]
        rows.append(row("reference", method, s, b, reference="resnet56"))
        rows.append(row("rs", method, s, b))
    return rows


BASE = [0.50, 0.53, 0.48, 0.51]


def verdicts(rows: list[dict]) -> dict[tuple[str, str], str]:
    from tools.bench.report import compare

    return {(c["method"], c["baseline"]): c["verdict"] for c in compare(rows, alpha=0.05)}


def test_clear_winner_tie_and_loser_get_their_verdicts() -> None:
    rows = (scenario("winner", [b + 0.10 + d for b, d in zip(BASE, (0.01, -0.01, 0.0, 0.005), strict=True)], BASE)
            + scenario("tie", [b + d for b, d in zip(BASE, (0.01, -0.01, 0.005, -0.005), strict=True)], BASE)
            + scenario("loser", [b - 0.08 + d for b, d in zip(BASE, (0.01, -0.01, 0.0, 0.0), strict=True)], BASE))
    v = verdicts(rows)
    for baseline in ("random", "reference", "rs"):
        assert v[("winner", baseline)] == "better"
        assert v[("tie", baseline)] == "no detectable difference"
        assert v[("loser", baseline)] == "worse"


def test_comparison_numbers_are_the_paired_ones() -> None:
    from tools.bench.report import compare

    mine = [0.60, 0.62, 0.61]
    rows = scenario("m", mine, [0.50, 0.51, 0.505])
    c = {x["baseline"]: x for x in compare(rows)}["reference"]
    assert c["n"] == 3 and c["diff"] == pytest.approx(0.105)
    # t interval of the differences 0.10, 0.11, 0.105 at 90%: mean +- t(0.95, 2) * sd / sqrt(3)
    half = 2.919986 * 0.005 / math.sqrt(3)
    assert (c["low"], c["high"]) == pytest.approx((0.105 - half, 0.105 + half), abs=1e-6)
    assert c["p_better"] < 0.05 < c["p_worse"]
    # the random baseline is the mean of the seed's random architectures
    assert {x["baseline"]: x for x in compare(rows)}["random"]["baseline_mean"] == pytest.approx(0.505)


def test_one_seed_is_too_few_and_only_paired_seeds_count() -> None:
    from tools.bench.report import compare

    rows = [row("retrain", "m", 0, 0.7), row("reference", "m", 0, 0.5, reference="resnet56")]
    assert verdicts(rows)[("m", "reference")] == "too few seeds"
    rows = [row("retrain", "m", s, 0.7 + 0.01 * s) for s in range(3)]
    rows += [row("reference", "m", s, 0.5, reference="resnet56") for s in (0, 2)]
    rows += [row("rs", "m", 1, 0.5, ok=False)]  # a failed job is no pair
    got = {c["baseline"]: c for c in compare(rows)}
    assert got["reference"]["seeds"] == [0, 2] and got["reference"]["n"] == 2 and "rs" not in got


def test_mean_interval_is_the_student_t_interval() -> None:
    from tools.bench.stats import mean_interval

    m = mean_interval([0.50, 0.52, 0.51])
    half = 4.302653 * 0.01 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (m["mean"], m["low"], m["high"], m["n"]) == pytest.approx((0.51, 0.51 - half, 0.51 + half, 3))
    one = mean_interval([0.4, None])
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.4) and math.isnan(one["low"])


def test_kendall_tau_and_its_bootstrap_interval() -> None:
    from tools.bench.stats import kendall_tau_interval

    up = list(range(8))
    perfect = kendall_tau_interval([(up, [0.1 * x for x in up])], n_resamples=300)
    assert perfect["tau"] == pytest.approx(1.0) and perfect["n_archs"] == 8
    assert perfect["low"] == pytest.approx(1.0) and perfect["high"] == pytest.approx(1.0)
    reversed_ = kendall_tau_interval([(up, up[::-1])], n_resamples=300)
    assert reversed_["tau"] == pytest.approx(-1.0) and reversed_["high"] == pytest.approx(-1.0)
    # 28 pairs, 7 discordant: tau = (21 - 7) / 28; its interval is wide around it
    noisy = kendall_tau_interval([(up, [3, 1, 0, 2, 5, 7, 4, 6])], n_resamples=500)
    assert noisy["tau"] == pytest.approx(14 / 28) and noisy["low"] < noisy["tau"] < noisy["high"]
    assert noisy["low"] < 0.4 and noisy["high"] > 0.7
    # several seeds: the mean of each seed's tau (pairs from different supernets are not pooled)
    mixed = kendall_tau_interval([(up, up), (up, [3, 1, 0, 2, 5, 7, 4, 6]), ([0.5], [0.1])], n_resamples=300)
    assert mixed["tau"] == pytest.approx((1 + 14 / 28) / 2) and mixed["groups"] == 2 and mixed["n_archs"] == 16
    assert mixed["low"] < mixed["tau"] < mixed["high"] <= 1.0


def test_report_shows_intervals_verdicts_and_tau(tmp_path: Path) -> None:
    from tools.bench.report import write_report

    rows = scenario("winner", [b + 0.1 for b in BASE[:3]], BASE[:3])
    rows.append({"key": "rank/winner/s0", "phase": "rank", "method": "winner", "label": "winner", "seed": 0,
                 "ok": True, "kendall_tau": 1.0, "supernet_acc": list(range(8)), "standalone_acc": list(range(8))})
    s = write_report(tmp_path, rows)
    md = (tmp_path / "results.md").read_text()
    assert "| better " in md and "α = 0.05" in md and "[1.00, 1.00]" in md
    assert [c["verdict"] for c in s["comparisons"]] == ["better"] * 3
    assert (tmp_path / "pareto.png").stat().st_size > 1000
