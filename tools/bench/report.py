"""results.md and pareto.png from results.jsonl alone (`--report DIR` rebuilds them)."""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from nas_common.benchmarking import markdown_table

HEADERS = ["method", "space", "MACs (M)", "params (M)", "search time (s)", "retrain time (s)",
           "test acc (mean ± std)", "Kendall τ", "seeds", "notes"]


def _ms(xs: list[float | None]) -> tuple[float, float, int]:
    v = [float(x) for x in xs if x is not None]
    if not v:
        return math.nan, math.nan, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per method and per baseline, aggregated over seeds (latest row per key wins)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in rows:
        latest[r["key"]] = r
    rows = list(latest.values())
    by_method: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        phase = r.get("phase")
        if phase in ("search", "retrain", "rank"):
            by_method[r["method"]][phase].append(r)
        elif phase in ("baseline", "random"):
            by_method[f"{phase}:{r['label']}"]["retrain"].append(r)
    out = []
    for name, phases in sorted(by_method.items(), key=lambda kv: (kv[0].startswith(("baseline:", "random:")),
                                                                   kv[0])):
        searches, retrains, ranks = phases.get("search", []), phases.get("retrain", []), phases.get("rank", [])
        ok_re = [r for r in retrains if r.get("ok")]
        errors = [f"{r['phase']} s{r['seed']}: {r.get('error')}" for r in searches + retrains + ranks
                  if not r.get("ok")]
        over = [r for r in searches if r.get("over_budget")]
        acc = _ms([r.get("test_acc") for r in ok_re])
        kind = "method"
        label = name
        if name.startswith("baseline:"):
            kind, label = "baseline", f"{name.split(':', 1)[1]} (reference)"
        elif name.startswith("random:"):
            kind, label = "random", name.split(":", 1)[1]
        space = next((r.get("space") for r in ok_re + searches if r.get("space")), "")
        taus = [r.get("kendall_tau") for r in ranks if r.get("ok")]
        notes = []
        if over:
            notes.append(f"over budget in {len(over)} seed(s)")
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
            "acc_mean": acc[0], "acc_std": acc[1], "n": acc[2],
            "tau": _ms(taus)[0] if any(t is not None for t in taus) else None,
            "errors": errors, "notes": notes,
            "device": next((r.get("device") for r in ok_re + searches if r.get("device")), ""),
        })
    return out


def _fmt_num(v: float | None, scale: float = 1.0, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v / scale:.{digits}f}"


def table(summary: list[dict[str, Any]]) -> str:
    rows = []
    for s in summary:
        acc = "—" if s["n"] == 0 else f"{100 * s['acc_mean']:.2f} ± {100 * s['acc_std']:.2f}"
        rows.append([s["name"], s["space"], _fmt_num(s["macs"], 1e6), _fmt_num(s["params"], 1e6, 3),
                     _fmt_num(s["search_time"], 1, 1), _fmt_num(s["retrain_time"], 1, 1), acc,
                     _fmt_num(s["tau"], 1, 2) if s["tau"] is not None else "—", s["n"], "; ".join(s["notes"])])
    return markdown_table(HEADERS, rows)


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
        x, y, err = s["macs"] / 1e6, 100 * s["acc_mean"], 100 * s["acc_std"]
        if s["kind"] == "method":
            ax.errorbar([x], [y], yerr=[err], fmt="o", ms=8, color=colours[ci % len(colours)], label=s["name"],
                        capsize=3)
            ci += 1
        elif s["kind"] == "baseline":
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
    ax.set_title("accuracy vs cost (★ reference networks, × random archs of the same space)")
    ax.grid(alpha=0.3)
    if ci:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(out: Path, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    from .harness import read_rows

    out = Path(out)
    rows = rows if rows is not None else read_rows(out)
    summary = summarize(rows)
    first = next((r for r in rows if r.get("provenance")), {})
    prov = first.get("provenance", {})
    head = (f"# Benchmark results\n\npreset `{first.get('preset', '?')}`, dataset `{first.get('dataset', '?')}`, "
            f"device {prov.get('device_name', '?')}, torch {prov.get('versions', {}).get('torch', '?')}, "
            f"git {prov.get('git_commit', '?')}\n\n"
            f"MACs are multiply-accumulates (what papers call FLOPs) of the network as retrained (the shared "
            f"recipe sizes every DARTS-space network alike). Accuracy: mean ± std over seeds.\n\n")
    md = head + table(summary) + "\n"
    (out / "results.md").write_text(md)
    plot(summary, out / "pareto.png")
    return {"rows": len(rows), "entries": summary, "results_md": str(out / "results.md"),
            "pareto_png": str(out / "pareto.png"), "table": table(summary)}


def report_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, default=str)
