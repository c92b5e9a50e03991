"""results.jsonl, the harness's record: one JSON line per finished job, appended as each one ends, read
back whole. A line cut by a kill is skipped on reading (that job runs again) and closed before the next
append, so it cannot swallow the next row. A job that failed runs again on resume; its new row supersedes
the failed one (the file keeps both, the reader the last row of each key)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = "results.jsonl"


def read_rows(out: Path) -> list[dict[str, Any]]:
    p = out / RESULTS
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: that job simply runs again
                continue
    last = {r["key"]: i for i, r in enumerate(rows) if "key" in r}
    return [r for i, r in enumerate(rows) if "key" not in r or last[r["key"]] == i]


def append_row(out: Path, row: dict[str, Any]) -> None:
    """Append one result line; a line cut by a kill is closed first, so it cannot swallow this one."""
    from nas_common.io import append_line

    p = out / RESULTS
    cut = False
    if p.exists() and p.stat().st_size:
        with open(p, "rb") as f:
            f.seek(-1, 2)
            cut = f.read(1) != b"\n"
    append_line(p, ("\n" if cut else "") + json.dumps(row, default=str))
