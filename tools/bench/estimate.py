"""How long a harness run will take, from measured per-job times.

The model, fitted to measured jobs (`CALIBRATION` plus the rows of any results.jsonl given):

* training (retrain, random, reference, a ranking architecture, a random-search candidate):
  `overhead + image_epochs * (a + b * MMACs)` seconds, with (a, b) fitted per space by least squares
  on the measured seconds per image-epoch (a space's networks differ in how fast a MAC runs: DARTS
  cells run ~4x slower per MAC than ResNets on this CPU); evaluation passes count a third of a
  training image each;
* a search: seconds per training image of the method's preset, measured, times the images;
* random search: exactly its method's search time (equal compute), plus the retrain of its pick.

Jobs run in two waves (searches and fixed baselines, then everything that needs a found network), each
placed longest first on `jobs` workers (what the harness does), so the estimate of a wave is the
makespan of that list schedule. Jobs already in results.jsonl cost nothing.

`CALIBRATION` holds measured per-job times (see there); `python -m tools.bench --estimate ...
--calibrate-from DIR` adds the finished jobs of another run, and a resumed run its own.
"""
from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# (space, MMACs, training images, epochs, evaluated test images, seconds) of measured retrain jobs, one
# torch thread each, two at a time on this project's 2-core CPU:
# * EVIDENCE_POINTS: the evidence run of docs/bench/evidence (`--preset evidence --jobs 2`, 2,500 training
#   images, 3 epochs, the 500 test images evaluated once; 1 h 15 min on the idle machine): its retrain,
#   random and reference jobs, per space in three bins of MACs, each the median of its jobs (`python -m
#   tools.bench --estimate --calibrate-from DIR` fits all of a run's rows instead);
# * MINI_POINTS: the older `mini` table and small `train_arch` runs, which span a wider range of MACs
#   (they give the fit its slope): scaled by MACHINE_SLOWDOWN, the factor that puts the model's job-kind
#   totals within 25% of the evidence run's (the test that holds it; the earlier 4,660-image evidence
#   run, partly beside other work, ran ~2.3x slower per image and is no longer a calibration point).
MACHINE_SLOWDOWN = 1.5
MEASURED_SCALE = 0.394  # the small runs were timed under a load of 4-7: ResNet-20's mini time / its time there
EVIDENCE_POINTS: tuple[tuple[str, float, int, int, int, float], ...] = (
    ("bsn-rescnf", 7.69, 2500, 3, 500, 9.4), ("bsn-rescnf", 20.63, 2500, 3, 500, 24.3),
    ("bsn-rescnf", 27.44, 2500, 3, 500, 35.7), ("darts", 4.25, 2500, 3, 500, 49.3),
    ("darts", 6.93, 2500, 3, 500, 57.1), ("darts", 8.82, 2500, 3, 500, 59.4),
    ("resnet", 22.54, 2500, 3, 500, 39.5), ("resnet", 23.12, 2500, 3, 500, 38.4),
    ("resnet", 24.10, 2500, 3, 500, 39.5), ("supnet-m", 1.45, 2500, 3, 500, 4.4),
    ("supnet-m", 1.51, 2500, 3, 500, 4.2), ("supnet-m", 1.55, 2500, 3, 500, 4.0),
)
MINI_POINTS: tuple[tuple[str, float, int, int, int, float], ...] = (
    ("bsn-resnet", 21.94, 4660, 5, 2500, 44.8), ("darts", 67.57, 4660, 5, 2500, 666.3),
    ("darts", 14.44, 4660, 5, 2500, 190.3), ("supnet-m", 1.48, 4660, 5, 2500, 9.2),
    ("resnet", 23.47, 4660, 5, 2500, 59.1), ("darts", 43.44, 4660, 5, 2500, 309.8),
    ("resnet", 40.81, 4660, 5, 2500, 84.6), ("resnet", 125.75, 4660, 5, 2500, 231.0),
    ("bsn-resnet", 21.94, 4660, 5, 2500, 43.8), ("darts", 53.15, 4660, 5, 2500, 493.1),
    ("darts", 34.53, 4660, 5, 2500, 349.2), ("resnet", 23.82, 4660, 5, 2500, 88.0),
    ("supnet-m", 1.51, 4660, 5, 2500, 9.3),
    ("darts", 7.39, 1024, 2, 500, 26.7 * MEASURED_SCALE), ("darts", 8.02, 1024, 2, 500, 31.7 * MEASURED_SCALE),
    ("bsn-resnet", 21.94, 1024, 2, 500, 10.7 * MEASURED_SCALE),
    ("supnet-m", 1.55, 1024, 2, 500, 2.5 * MEASURED_SCALE),
)
CALIBRATION: tuple[tuple[str, float, int, int, int, float], ...] = EVIDENCE_POINTS + tuple(
    (space, mmacs, n, epochs, n_eval, secs * MACHINE_SLOWDOWN) for space, mmacs, n, epochs, n_eval, secs in MINI_POINTS)
# per method, its `tiny` search on the 2,500 cifar10-mini training images of the evidence run (mean of its
# 3 seeds, two jobs at a time), the space and the mean MACs of what it found, at the size of the found
# arch.json (`net`; scaled to a preset's size of the space by the reference network's MACs)
SEARCH_CALIBRATION: dict[str, dict[str, Any]] = {
    "bsn": {"seconds": 82.4, "images": 2500, "space": "bsn-rescnf", "mmacs": 18.53},
    "ista-nas": {"seconds": 81.2, "images": 2500, "space": "darts", "mmacs": 41.82,
                 "net": {"C": 16, "layers": 8, "auxiliary": True}},
    "nat": {"seconds": 270.6, "images": 2500, "space": "darts", "mmacs": 375.3,
            "net": {"C": 36, "layers": 20, "auxiliary": True}},
    "posterior-nas": {"seconds": 99.5, "images": 2500, "space": "supnet-m", "mmacs": 1.49},
    "tas": {"seconds": 68.3, "images": 2500, "space": "resnet", "mmacs": 23.26},
}
SPACE_ALIASES = {"darts-bn": "darts", "supnet-mi": "supnet-m", "bsn-cnf": "bsn-resnet"}
JOB_OVERHEAD_S = 2.0  # process start, run directory, TensorBoard writer, cost count
MATCH_S = 4.0  # drawing a random arch within the MAC tolerance / fitting a reference (measured: 0.1-8 s CPU)
# random search's draw of one candidate at the target's MACs, per space (the evidence run's rs_sampling_s
# per candidate: DARTS 4.5 s; the other spaces 0.02-1 s); random search spends its time budget on
# training candidates and these draws come on top
RS_SAMPLE_S = {"darts": 4.5}
RS_SAMPLE_DEFAULT_S = 0.5
RANK_SCORE_S = 3.0  # the ranking hook's supernet score of one architecture
UNKNOWN_SEARCH_S_PER_IMAGE = 0.02  # a method not in SEARCH_CALIBRATION


@dataclass
class CostModel:
    """Seconds of each kind of job; see the module docstring."""

    per_space: dict[str, tuple[float, float]] = field(default_factory=dict)  # space -> (a, b)
    search: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(SEARCH_CALIBRATION))

    @classmethod
    def fit(cls, points: Iterable[tuple[str, float, int, int, int, float]] = CALIBRATION,
            searches: dict[str, dict[str, Any]] | None = None) -> CostModel:
        """Least-squares (a, b) per space of seconds / image-epoch = a + b * MMACs (a, b >= 0)."""
        import numpy as np

        by: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for space, mmacs, n, epochs, n_eval, secs in points:
            units = n * epochs + n_eval / 3.0
            if units > 0 and secs > JOB_OVERHEAD_S:
                by[SPACE_ALIASES.get(space, space)].append((mmacs, (secs - JOB_OVERHEAD_S) / units))
        per_space = {}
        for space, pts in by.items():
            m = np.array([p[0] for p in pts])
            y = np.array([p[1] for p in pts])
            if len(pts) >= 2 and np.ptp(m) > 0:
                b, a = np.polyfit(m, y, 1)
                if a < 0 or b < 0:  # keep it physical: proportional to MACs, or constant
                    b, a = (float(np.sum(m * y) / np.sum(m * m)), 0.0) if b > 0 else (0.0, float(y.mean()))
            else:
                a, b = 0.0, float(np.mean(y / np.maximum(m, 1e-9)))
            per_space[space] = (float(a), float(b))
        return cls(per_space, {**SEARCH_CALIBRATION, **(searches or {})})

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> CostModel:
        """The default calibration plus the finished jobs of a results.jsonl (retrains and searches)."""
        points = list(CALIBRATION)
        searches: dict[str, dict[str, Any]] = {}
        for r in rows:
            if not r.get("ok"):
                continue
            cfg = r.get("config", {})
            if r.get("phase") in ("retrain", "random", "reference", "baseline") and r.get("retrain_time_s"):
                n = cfg.get("n_train") or 0
                epochs = (r.get("metrics") or {}).get("epochs") or 0
                if n and epochs and r.get("macs"):
                    points.append((r.get("space", ""), r["macs"] / 1e6, n, epochs, cfg.get("n_test") or 0,
                                   float(r["retrain_time_s"])))
            if r.get("phase") == "search" and r.get("search_time_s") and cfg.get("n_train"):
                searches[r["method"]] = {"seconds": float(r["search_time_s"]), "images": cfg["n_train"],
                                         "space": r.get("space"), "mmacs": (r.get("macs") or 0) / 1e6}
        return cls.fit(points, searches)

    # ---- predictions ----------------------------------------------------------------------------------
    def per_image(self, space: str, mmacs: float) -> float:
        a, b = self.per_space.get(SPACE_ALIASES.get(space, space)) or self.per_space.get("darts", (0.003, 3e-4))
        return a + b * mmacs

    def train_s(self, space: str, mmacs: float, n_train: int, epochs: int, n_eval: int = 0) -> float:
        return JOB_OVERHEAD_S + (n_train * epochs + n_eval / 3.0) * self.per_image(space, mmacs)

    def search_s(self, method: str, n_train: int) -> float:
        c = self.search.get(method)
        if c is None:
            return JOB_OVERHEAD_S + UNKNOWN_SEARCH_S_PER_IMAGE * n_train
        return JOB_OVERHEAD_S + c["seconds"] * n_train / max(1, c["images"])

    def found(self, method: str, net: dict[str, dict[str, Any]] | None = None,
              spaces: Sequence[str] = ()) -> tuple[str, float]:
        """The space and MMACs a method's search is expected to find (before it has run), at the size
        `net` gives its space (scaled by the MACs of the space's reference network at the two sizes).
        A method without a measured search is assumed in the first of its declared `spaces`."""
        c = self.search.get(method) or {}
        space = c.get("space") or (spaces[0] if spaces else "resnet")
        mmacs = float(c.get("mmacs") or 20.0)
        size = (net or {}).get(space)
        if size and c.get("net") and size != c["net"]:
            at_size, at_calibration = _reference_mmacs(space, size), _reference_mmacs(space, c["net"])
            if at_size and at_calibration:  # else: a space without a reference network keeps the measured MACs
                mmacs *= at_size / at_calibration
        return space, mmacs


def _reference_mmacs(space: str, size: dict[str, Any]) -> float | None:
    """MMACs of the space's reference network with its net updated by `size` (CIFAR-10 input); None
    when the space names no reference network (`Space.reference`)."""
    from .matching import reference_macs

    macs = reference_macs(space, {"num_classes": 10, "input": [3, 32, 32], **size})
    return None if macs is None else macs / 1e6


def makespan(durations: Sequence[float], workers: int) -> float:
    """Finish time of `durations` placed longest first on `workers` (each job on the first free one)."""
    free = [0.0] * max(1, workers)
    for d in sorted(durations, reverse=True):
        t = heapq.heappop(free)
        heapq.heappush(free, t + d)
    return max(free) if durations else 0.0


def format_duration(seconds: float) -> str:
    if seconds != seconds or math.isinf(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
