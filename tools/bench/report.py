"""results.md and pareto.png from results.jsonl alone (`--report DIR` rebuilds them)."""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from nas_common.benchmarking import markdown_table
from nas_common.io import atomic_path, atomic_write_text

HEADERS = ["method", "space", "MACs (M)", "params (M)", "search time (s)", "retrain time (s)",
           "test acc (mean, 95% CI)", "Kendall τ", "seeds", "notes"]
COMPARE_HEADERS = ["method", "baseline (same space, same MACs)", "seeds", "method acc", "baseline acc",
                   "difference (90% CI)", "p (method better)", "verdict"]
RANK_HEADERS = ["method", "architectures", "seeds", "Kendall τ", "95% bootstrap CI", "notes"]
# the baselines a method is paired with, seed by seed: row phase -> how the table names it
PAIRED = {"random": "random architectures (mean per seed)", "reference": "reference network, scaled",
          "rs": "random search, equal time"}


def _ms(xs: list[float | None]) -> tuple[float, float, int]:
    v = [float(x) for x in xs if x is not None]
    if not v:
        return math.nan, math.nan, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per key, the last one written (a re-run job replaces its earlier line)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in rows:
        latest[r["key"]] = r
    return list(latest.values())


def _entry_name(r: dict[str, Any]) -> str:
    phase = r.get("phase")
    if phase in ("search", "retrain", "rank"):
        return r["method"]
    if phase == "reference" and r.get("reference"):
        return f"reference:{r['reference']} scaled (~{r['method']})"
    if phase == "baseline":
        return f"baseline:{r['label']} (unscaled)"
    return f"{phase}:{r['label']}"


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per method and per baseline, aggregated over seeds (latest row per key wins)."""
    from .stats import mean_interval

    rows = latest_rows(rows)
    by_method: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        phase = r.get("phase")
        name = _entry_name(r)
        if phase in ("search", "retrain", "rank"):
            by_method[name][phase].append(r)
        elif phase in ("baseline", "random", "reference", "rs"):
            by_method[name]["retrain"].append(r)
    order = {"method": 0, "reference": 1, "rs": 2, "random": 3, "baseline": 4}
    out = []
    for name, phases in by_method.items():
        searches, retrains, ranks = phases.get("search", []), phases.get("retrain", []), phases.get("rank", [])
        ok_re = [r for r in retrains if r.get("ok")]
        errors = [f"{r['phase']} s{r['seed']}: {r.get('error')}" for r in searches + retrains + ranks
                  if not r.get("ok")]
        over = [r for r in searches if r.get("over_budget")]
        acc = mean_interval([r.get("test_acc") for r in ok_re])
        std = _ms([r.get("test_acc") for r in ok_re])[1]
        kind, label = "method", name
        if ":" in name and name.split(":", 1)[0] in order:
            kind, label = name.split(":", 1)
        space = next((r.get("space") for r in ok_re + searches if r.get("space")), "")
        taus = [r.get("kendall_tau") for r in ranks if r.get("ok")]
        notes = []
        if over:
            notes.append(f"over budget in {len(over)} seed(s)")
        off = [r for r in ok_re if r.get("within_tolerance") is False]
        if off:
            worst = max(abs(r["match"]["mac_gap"]) for r in off)
            notes.append(f"MACs off by up to {100 * worst:.0f}% in {len(off)} run(s)")
        if errors:
            notes.append("; ".join(errors)[:200])
        rank_ok = [r for r in ranks if r.get("ok")]
        if rank_ok and all(t is None for t in taus):  # the ranking check ran but gave no τ: say why
            notes.append("τ undefined: " + ("no sample_and_score hook" if any(r.get("note") for r in rank_ok)
                                            else "tied accuracies"))
        out.append({
            "name": label, "kind": kind, "space": space,
            "macs": _ms([r.get("macs") for r in ok_re] or [r.get("macs") for r in searches if r.get("ok")])[0],
            "params": _ms([r.get("params") for r in ok_re] or [r.get("params") for r in searches if r.get("ok")])[0],
            "search_time": _ms([r.get("search_time_s") for r in searches if r.get("ok")])[0],
            "retrain_time": _ms([r.get("retrain_time_s") for r in ok_re])[0],
            "acc_mean": acc["mean"], "acc_low": acc["low"], "acc_high": acc["high"], "acc_std": std,
            "n": acc["n"], "tau": _ms(taus)[0] if any(t is not None for t in taus) else None,
            "errors": errors, "notes": notes,
            "device": next((r.get("device") for r in ok_re + searches if r.get("device")), ""),
        })
    out.sort(key=lambda e: (order.get(e["kind"], 9), e["name"]))
    return out


def compare(rows: list[dict[str, Any]], alpha: float = 0.05) -> list[dict[str, Any]]:
    """Each method's retrained accuracy against each paired baseline, seed by seed (see stats.py)."""
    from .stats import paired_comparison

    rows = [r for r in latest_rows(rows) if r.get("ok")]
    methods = sorted({r["method"] for r in rows if r.get("phase") == "retrain"})
    out = []
    for m in methods:
        mine = {r["seed"]: r["test_acc"] for r in rows if r.get("phase") == "retrain" and r["method"] == m
                and r.get("test_acc") is not None}
        for phase, what in PAIRED.items():
            per_seed: dict[int, list[float]] = defaultdict(list)
            names = set()
            for r in rows:
                if r.get("phase") == phase and r["method"] == m and r.get("test_acc") is not None:
                    per_seed[r["seed"]].append(r["test_acc"])
                    names.add(r.get("reference") or r.get("space") or "")
            seeds = sorted(set(mine) & set(per_seed))
            if not per_seed:
                continue
            c = paired_comparison([mine[s] for s in seeds], [statistics.fmean(per_seed[s]) for s in seeds], alpha)
            space = next((r.get("space") for r in rows if r["method"] == m and r.get("phase") == "retrain"), "")
            label = what if phase != "reference" else f"{', '.join(sorted(names))} scaled"
            per = max((len(v) for v in per_seed.values()), default=0)
            if phase == "random":
                label = f"{per} random {space} archs (mean per seed)"
            out.append({"method": m, "baseline": phase, "label": label, "seeds": seeds, **c})
    return out


def ranking(rows: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Kendall's tau per method over the ranking checks of all seeds, with a bootstrap interval."""
    from .stats import kendall_tau_interval

    rows = [r for r in latest_rows(rows) if r.get("phase") == "rank" and r.get("ok")]
    out = []
    for m in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == m]
        groups = [(r.get("supernet_acc") or [], r.get("standalone_acc") or []) for r in mine]
        groups = [(a, b) for a, b in groups if a and b and None not in b]
        res = kendall_tau_interval(groups, seed=seed)
        note = ""
        if not groups:
            note = "no sample_and_score hook" if any(r.get("note") for r in mine) else "no scored architectures"
        elif res["tau"] != res["tau"]:
            note = "τ undefined: tied accuracies"
        out.append({"method": m, "seeds": sorted(r["seed"] for r in mine), **res, "note": note})
    return out


def _fmt_num(v: float | None, scale: float = 1.0, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v / scale:.{digits}f}"


def _pct(v: float) -> str:
    return "—" if v != v else f"{100 * v:.2f}"


def table(summary: list[dict[str, Any]]) -> str:
    rows = []
    for s in summary:
        if s["n"] == 0:
            acc = "—"
        elif s["n"] == 1:
            acc = f"{_pct(s['acc_mean'])} (1 seed)"
        else:
            acc = f"{_pct(s['acc_mean'])} [{_pct(s['acc_low'])}, {_pct(s['acc_high'])}]"
        rows.append([s["name"], s["space"], _fmt_num(s["macs"], 1e6), _fmt_num(s["params"], 1e6, 3),
                     _fmt_num(s["search_time"], 1, 1), _fmt_num(s["retrain_time"], 1, 1), acc,
                     _fmt_num(s["tau"], 1, 2) if s["tau"] is not None else "—", s["n"], "; ".join(s["notes"])])
    return markdown_table(HEADERS, rows)


def compare_table(comparisons: list[dict[str, Any]]) -> str:
    rows = []
    for c in comparisons:
        diff = "—" if c["diff"] != c["diff"] else f"{100 * c['diff']:+.2f}"
        if c["low"] == c["low"]:
            diff += f" [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]"
        p = "—" if c["p_better"] != c["p_better"] else f"{c['p_better']:.3f}"
        rows.append([c["method"], c["label"], c["n"], _pct(c["method_mean"]), _pct(c["baseline_mean"]), diff, p,
                     c["verdict"]])
    return markdown_table(COMPARE_HEADERS, rows)


def rank_table(ranks: list[dict[str, Any]]) -> str:
    rows = []
    for r in ranks:
        ci = "—" if r["low"] != r["low"] else f"[{r['low']:.2f}, {r['high']:.2f}]"
        rows.append([r["method"], r["n_archs"], len(r["seeds"]), _fmt_num(r["tau"], 1, 2), ci, r["note"]])
    return markdown_table(RANK_HEADERS, rows)


def data_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Which data and which splits judged and chose, from the rows' records."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in latest_rows(rows):
        if not r.get("ok"):
            continue
        for role in ("judged_on", "selected_on", "trained_on", "held_out_for_method"):
            rec = r.get(role)
            if rec:
                seen.setdefault((role, rec["fingerprint"]), rec)
    words = {"judged_on": "judged (test accuracy of every retrained network)",
             "selected_on": "random search's choice", "trained_on": "training (searches and retrains)",
             "held_out_for_method": "handed to each search as its `test` split (a held-out part of training)"}
    out = []
    for (role, fp), rec in sorted(seen.items()):
        out.append(f"- {words[role]}: `{rec['dataset']}` split `{rec['split']}`, {rec['n']} images "
                   f"(fingerprint {fp})")
    return out


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ci = 0
    for s in summary:
        if s["n"] == 0 or math.isnan(s["macs"]):
            continue
        x, y = s["macs"] / 1e6, 100 * s["acc_mean"]
        err = 0.0 if s["acc_low"] != s["acc_low"] else 100 * (s["acc_high"] - s["acc_mean"])
        if s["kind"] == "method":
            ax.errorbar([x], [y], yerr=[err], fmt="o", ms=8, color=colours[ci % len(colours)], label=s["name"],
                        capsize=3)
            ci += 1
        elif s["kind"] in ("baseline", "reference", "rs"):
            ax.errorbar([x], [y], yerr=[err], fmt="*", ms=12, color="black", capsize=3)
            ax.annotate(s["name"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7)
        else:
            ax.errorbar([x], [y], yerr=[err], fmt="x", ms=7, color="grey", capsize=3)
            ax.annotate(s["name"], (x, y), textcoords="offset points", xytext=(5, -10), fontsize=6, color="grey")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("MACs (millions, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs cost (★ reference networks and random search, × random archs)", fontsize=9)
    ax.grid(alpha=0.3)
    if ci:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(out: Path, rows: list[dict[str, Any]] | None = None, alpha: float | None = None) -> dict[str, Any]:
    from .presets import PRESETS
    from .results import read_rows

    out = Path(out)
    rows = rows if rows is not None else read_rows(out)
    summary = summarize(rows)
    first = next((r for r in rows if r.get("provenance")), {})
    preset = PRESETS.get(first.get("preset", ""))
    if alpha is None:
        alpha = preset.alpha if preset is not None else 0.05
    note = preset.note if preset is not None else ""
    comparisons = compare(rows, alpha)
    ranks = ranking(rows)
    prov = first.get("provenance", {})
    commits = sorted({str((r.get("provenance") or {}).get("git_commit", "?")) for r in rows if r.get("provenance")})
    short = [c[:7] + ("-dirty" if c.endswith("-dirty") else "") for c in commits]
    git = ("git ?" if not commits else f"git {commits[0]}" if len(commits) == 1 else
           f"rows made at {len(commits)} git commits ({', '.join(short)}; each row's provenance names its own)")
    head = (f"# Benchmark results\n\npreset `{first.get('preset', '?')}`, dataset `{first.get('dataset', '?')}`, "
            f"device {prov.get('device_name', '?')}, torch {prov.get('versions', {}).get('torch', '?')}, "
            f"{git}\n\n"
            f"MACs are multiply-accumulates (what papers call FLOPs) of the network as retrained (the shared "
            f"recipe sizes every DARTS-space network alike). Accuracy: mean over seeds and its 95% Student-t "
            f"interval. Every random and reference network is matched to the found network's MACs; random "
            f"search spends the method's search time.\n\n" + (f"**Note**: {note}.\n\n" if note else ""))
    data = data_lines(rows)
    md = head + table(summary) + "\n"
    if data:
        md += "\n## Data\n\n" + "\n".join(data) + "\n"
    if comparisons:
        md += (f"\n## Each method against baselines at the same cost\n\nPaired by seed (same data order and "
               f"initialisation seed); difference = method - baseline in points, with the two-sided "
               f"{100 * (1 - 2 * alpha):.0f}% interval; p from the one-sided paired t-test that the method is "
               f"better (scipy.stats.ttest_rel); verdict \"better\" / \"worse\" when the one-sided test in that "
               f"direction rejects at α = {alpha:g}, else \"no detectable difference\".\n\n"
               + compare_table(comparisons) + "\n")
    if ranks:
        md += ("\n## Ranking: Kendall's τ between supernet and stand-alone accuracy\n\nMean of each seed's "
               "τ-b; 95% percentile bootstrap interval resampling architectures (scipy.stats.bootstrap).\n\n"
               + rank_table(ranks) + "\n")
    atomic_write_text(out / "results.md", md)
    plot(summary, out / "pareto.png")
    return {"rows": len(rows), "entries": summary, "comparisons": comparisons, "ranking": ranks,
            "results_md": str(out / "results.md"), "pareto_png": str(out / "pareto.png"), "table": table(summary),
            "compare_table": compare_table(comparisons) if comparisons else "", "note": note}


def report_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, default=str)
