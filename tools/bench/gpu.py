"""The prepared GPU run: one table of what the library does on an accelerator, in under 8 minutes.

    python -m tools.bench.gpu                      # (make bench-gpu) one GPU, synthetic CIFAR-shaped data
    python -m tools.bench.gpu --out gpu.json       # also write every number as JSON
    python -m tools.bench.gpu --device cpu --micro # the same script at micro size (the test suite runs it)

Rows, on synthetic CIFAR-shaped data (50,000 + 10,000 random 32x32 images, 10 classes; nothing is
downloaded, so accuracies mean nothing and only times, memory and syncs are measured):

* **search step, per registered method**: a short real search of each method (`run_search`, the
  `paper` preset by default) whose steps are observed through the contract's step markers
  (`nas_common.context.STEP_OBSERVERS` enters a context manager around every `ctx.step()` a method
  runs): after `--warmup` untimed steps, `--steps` steps are timed (device synchronised before and
  after each) with `torch.cuda.set_sync_debug_mode("error")` inside them, so a host-device sync in a
  step raises and the row names it; then the search is stopped. A method with a
  `host_sync_allowlist` runs its steps in mode "warn" instead, and the row counts the warnings. On the
  CPU the same steps run under nas_common.testing's dispatch-level sync detector. A method that marks
  no step, refuses the configuration, or does not reach a step within its time cap says so in its row.
* **ISTA-NAS sparse vs dense supernet** (time and peak memory of one search step, the paper's setting
  C 16, 8 cells, batch 64; the issue's 10x claim), built from the `ista_nas` package's public blocks
  when it is installed (skipped with a note otherwise): the harness depends on no method package.
* **Trainer**: a plain PyTorch loop, the Trainer in fp32 (NCHW) and in bf16 + channels_last (ResNet-20,
  images/s; on the CPU autocast is off, so the bf16 row measures channels_last alone).
* **DeviceLoader**: augmented training batches served on the device (images/s).
* **2-process DDP search step** (where two GPUs are visible, or with `--ddp on`: gloo on the CPU): the
  first method whose step row succeeded, under `torchrun --nproc-per-node 2`, at the same per-rank batch
  (so twice the global batch), against its 1-process step time. Its steps run in sync debug mode "warn"
  (DDP's own bookkeeping may read on the host): the row counts the syncs instead of stopping.

Every section has a time cap and the whole run a budget (`--budget-s`, 450 s by default), so it finishes
in under 8 minutes; what a cap cut short says so. No GPU was available when this script was written:
its CUDA path has run only as far as the CPU micro run reaches (the same code, with the CUDA-only calls
guarded), so the first GPU run is also its test. Per-method settings: `-o METHOD:KEY=VALUE`.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
HEADERS = ["benchmark", "setting", "result", "ratio", "notes"]
SECTIONS = ("search", "ista", "trainer", "loader", "ddp")


# ---- sizes ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """How big each section runs: `FULL` on a GPU, `MICRO` for the CPU test run."""

    n_train: int
    n_test: int
    preset: str  # the methods' config preset
    warmup: int  # untimed steps before the timed ones
    steps: int  # timed search steps per method
    method_cap_s: float  # most seconds one method's search may take (building it included)
    ista: dict[str, int] = field(default_factory=dict)  # C, layers, batch of the ISTA-NAS comparison
    ista_iters: int = 5
    ista_image: int = 32  # side of the square input images of the ISTA-NAS comparison
    trainer_depth: int = 20
    trainer_images: int = 25_600
    trainer_batch: int = 256
    trainer_epochs: int = 2
    loader_batch: int = 256
    loader_epochs: int = 2


FULL = Sizes(n_train=50_000, n_test=10_000, preset="paper", warmup=3, steps=10, method_cap_s=60.0,
             ista={"C": 16, "layers": 8, "batch": 64})
MICRO = Sizes(n_train=64, n_test=32, preset="tiny", warmup=1, steps=2, method_cap_s=120.0,
              ista={"C": 4, "layers": 3, "batch": 4}, ista_iters=1, ista_image=16, trainer_depth=8, trainer_images=128,
              trainer_batch=32, trainer_epochs=1, loader_batch=32, loader_epochs=1)


@dataclass
class Row:
    benchmark: str
    setting: str
    result: str
    ratio: str = ""
    notes: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # the numbers behind the row (the --out JSON)
    error: str | None = None  # what stopped the measurement, when something did

    def cells(self) -> list[str]:
        notes = "; ".join(x for x in (self.notes, f"error: {self.error}" if self.error else "") if x)
        return [self.benchmark, self.setting, self.result, self.ratio, notes]


# ---- time limits ---------------------------------------------------------------------------------------
class Clock:
    """The run's time budget; sections ask it how long they may take."""

    def __init__(self, budget_s: float) -> None:
        self.t0, self.budget_s = time.monotonic(), budget_s

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def cap(self, want: float, reserve: float = 0.0) -> float:
        """`want` seconds, or what is left after keeping `reserve` for later sections (0 or more)."""
        return max(0.0, min(want, self.left() - reserve))


class TimeCap(BaseException):  # noqa: N818 - not an error: the section's time is up
    """Raised (from a timer signal) in the main thread when a section's time cap is reached. A
    BaseException, so that a method's `except Exception` does not swallow it."""


@contextlib.contextmanager
def time_cap(seconds: float) -> Iterator[None]:
    """Raise TimeCap after `seconds` of wall time inside (main thread, POSIX; elsewhere no cap)."""
    if seconds <= 0:
        raise TimeCap()
    if not hasattr(signal, "setitimer") or sys.platform == "win32":
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise TimeCap()

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---- data ----------------------------------------------------------------------------------------------
def synthetic_cifar(n_train: int, n_test: int, seed: int = 0) -> Any:
    """Random uint8 32x32 RGB images with random labels of 10 classes, shaped like CIFAR-10 (no download)."""
    import numpy as np

    from nas_common.data.datasets import CIFAR_MEAN, CIFAR_STD, from_arrays

    rng = np.random.default_rng(seed)
    return from_arrays("synthetic-cifar10", rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
                       rng.integers(0, 10, n_train), rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
                       rng.integers(0, 10, n_test), mean=CIFAR_MEAN, std=CIFAR_STD, source="synthetic")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.2f} ms"


# ---- search steps ----------------------------------------------------------------------------------------
class StepsDone(BaseException):  # noqa: N818 - not an error: enough steps were timed
    """Raised at the end of the last timed step to stop the search (a BaseException: see TimeCap)."""


class HostSync(RuntimeError):
    """A host-device sync inside a search step (CPU: found by the dispatch-level detector)."""


class StepTimer:
    """The observer entered around every `ctx.step()`: warm-up steps, then timed steps under the sync
    check, then StepsDone."""

    def __init__(self, device: torch.device, warmup: int, steps: int, sync_mode: str = "error",
                 allow: frozenset[str] = frozenset()) -> None:
        self.device, self.warmup, self.steps = device, warmup, steps
        self.sync_mode, self.allow = sync_mode, allow
        self.seen = 0
        self.times: list[float] = []
        self.sync_error: str | None = None
        self.sync_warnings = 0
        self.sync_ops: dict[str, int] = {}  # cpu: which data-dependent ops the detector saw (mode warn)
        self._depth = 0

    @contextlib.contextmanager
    def observe(self) -> Iterator[None]:
        if self._depth:  # a step inside a step: the outer one is timed
            yield
            return
        self._depth += 1
        index = self.seen
        self.seen += 1
        try:
            if index < self.warmup:
                yield
                return
            _sync(self.device)
            t0 = time.perf_counter()
            with self._sync_check(index):
                yield
            _sync(self.device)
            self.times.append(time.perf_counter() - t0)
        finally:
            self._depth -= 1
        if len(self.times) >= self.steps:
            raise StepsDone()

    @contextlib.contextmanager
    def _sync_check(self, index: int) -> Iterator[None]:
        if self.device.type == "cuda":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode(self.sync_mode)
                try:
                    yield
                except RuntimeError as e:
                    if "synchroniz" in str(e):
                        self.sync_error = f"step {index + 1}: {str(e).splitlines()[0]}"
                    raise
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            self.sync_warnings += sum("synchroniz" in str(w.message) for w in caught)
            return
        from nas_common.syncs import HostSyncDetector

        det = HostSyncDetector(self.allow)
        with det:
            yield
        if det.found and self.sync_mode == "warn":
            self.sync_warnings += sum(det.found.values())
            for op, n in det.found.items():
                self.sync_ops[op] = self.sync_ops.get(op, 0) + n
        elif det.found:
            self.sync_error = f"step {index + 1}: {det.found}"
            raise HostSync(f"host-device sync inside step {index + 1}: {det.found}")


def search_step_row(method: str, ds: Any, device: torch.device, sizes: Sizes, cap_s: float,
                    overrides: dict[str, Any], preset: str | None = None, sync_mode: str | None = None) -> Row:
    """Time the steps of a short real search of `method` (see the module docstring). `sync_mode`: the
    sync debug mode of the timed steps (default "error", "warn" for a method with an allow-list)."""
    from nas_common.config import config_to_dict
    from nas_common.context import STEP_OBSERVERS
    from nas_common.errors import NASError
    from nas_common.methods import Task
    from nas_common.registry import get_method
    from nas_common.search import method_config, run_search

    preset = preset or sizes.preset
    setting = f"{preset} preset" + (f" + {overrides}" if overrides else "")
    row = Row(f"search step: {method}", setting, "—")
    try:
        cls = get_method(method)
        cfg = method_config(cls, preset=preset, overrides=overrides)
        batch = config_to_dict(cfg).get("batch_size")  # shown when the config has one
        if batch:
            row.setting += f", batch {batch}"
        allow = frozenset(cls.host_sync_allowlist)
    except Exception as e:  # noqa: BLE001 - a broken package is its row's error
        row.error = f"{type(e).__name__}: {e}"
        return row
    mode = sync_mode or ("warn" if allow else "error")
    timer = StepTimer(device, sizes.warmup, sizes.steps, sync_mode=mode, allow=allow)
    _free(device)
    _peak_reset(device)
    outcome = "finished"
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with STEP_OBSERVERS.observe(timer.observe), time_cap(cap_s):
                run_search(method, Task(dataset=ds, device=device, seed=0), out=Path(tmp) / "run", preset=preset,
                           overrides=overrides, progress=False)
        except StepsDone:
            outcome = "stopped"
        except TimeCap:
            outcome = "capped"
        except NASError as e:  # the method's check refused the configuration, or the run failed cleanly
            row.error = f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - a crash (or a sync, on CUDA) is the row's result
            if timer.sync_error:
                row.error = f"host-device sync inside {timer.sync_error}"
            else:
                row.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    wall = time.monotonic() - t0
    row.data = {"method": method, "preset": preset, "overrides": overrides, "steps_seen": timer.seen,
                "step_times_s": timer.times, "wall_s": wall, "outcome": outcome, "sync_mode": mode,
                "sync_warnings": timer.sync_warnings, "sync_ops": timer.sync_ops, "peak_mib": _peak_mib(device)}
    if timer.times:
        med = statistics.median(timer.times)
        row.data["median_step_s"] = med
        row.result = f"{_ms(med)} / step"
        row.ratio = f"median of {len(timer.times)} after {sizes.warmup} warm-up"
    notes = []
    if row.error is None and timer.seen == 0:
        row.error = (f"no search step marked (`with ctx.step():`) in {wall:.0f} s"
                     + (f" (time cap {cap_s:.0f} s)" if outcome == "capped" else " (the whole search)"))
    elif row.error is None and outcome == "capped":
        notes.append(f"time cap {cap_s:.0f} s after {timer.seen} step(s)")
    elif row.error is None and outcome == "finished" and len(timer.times) < sizes.steps:
        notes.append(f"the search ended after {timer.seen} step(s)")
    if timer.times and not timer.sync_error:
        where = "sync debug mode" if device.type == "cuda" else "cpu, dispatch-level detector"
        if mode == "error":
            notes.append(f"{where} error: no sync")
        else:
            notes.append(f"{where} warn: {timer.sync_warnings} sync(s)"
                         + (f" {timer.sync_ops}" if timer.sync_ops else "")
                         + (f", allow-list {sorted(allow)}" if allow else ""))
    if _peak_mib(device) is not None:
        notes.append(f"peak {_peak_mib(device):.0f} MiB")
    row.notes = "; ".join(notes)
    return row


# ---- ISTA-NAS sparse against the dense supernet -------------------------------------------------------------
def _saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd saves for backward while fn() runs (each storage once): the CPU's memory measure."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        with contextlib.suppress(RuntimeError, NotImplementedError):
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def _step_peak_mib(step: Callable[[], None], device: torch.device) -> float:
    """Peak allocated memory above what was allocated before, during one step (CUDA)."""
    _sync(device)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    _sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def ista_rows(device: torch.device, sizes: Sizes) -> list[Row]:
    """One search step of ISTA-NAS's sparse network (b step + weight step) and of the dense DARTS supernet
    of the same space and size (alpha step + weight step): time and memory."""

    from nas_common.benchmarking import median_times_interleaved
    from nas_common.spaces.darts import DartsSupernet

    C, L, B, S = sizes.ista["C"], sizes.ista["layers"], sizes.ista["batch"], sizes.ista_image
    setting = f"C {C}, {L} cells, batch {B}, {S}x{S}, channels_last"
    if importlib.util.find_spec("ista_nas") is None:
        return [Row("ISTA-NAS sparse vs dense supernet", setting, "skipped",
                    notes="ista_nas is not installed (pip install -e packages/ista-nas)")]
    try:  # the package's public blocks, looked up by name: tools/bench imports no method package statically
        ista = importlib.import_module("ista_nas")
        network = importlib.import_module("ista_nas.network")
        steps = importlib.import_module("ista_nas.benchmarking")
        primitives, code_cls = ista.ISTA_PRIMITIVES, ista.CompressedCode
        search_supernet = network.search_supernet
    except (ImportError, AttributeError) as e:
        return [Row("ISTA-NAS sparse vs dense supernet", setting, "skipped",
                    notes=f"ista_nas lacks a block this row uses: {e}")]
    torch.manual_seed(0)
    fmt = torch.channels_last
    x = torch.randn(B, 3, S, S, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (B,), device=device)

    sparse = search_supernet(C, 10, L, 4, 3).to(device, memory_format=fmt).train()
    w_opt = torch.optim.SGD(sparse.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    code = code_cls(seed=0).to(device)
    z, _ = code.recover(1e-5)
    code.set_code(z)
    sparse_step, sparse_forward = steps.sparse_search_step(sparse, code, w_opt, x, y)  # reads the support once
    dense = DartsSupernet(C, 10, L, primitives=primitives).to(device, memory_format=fmt).train()
    dense_step, dense_forward = steps.dense_search_step(dense, x, y)

    t_sparse, t_dense = median_times_interleaved([sparse_step, dense_step], device, 1, sizes.ista_iters)
    if device.type == "cuda":
        m_sparse, m_dense = _step_peak_mib(sparse_step, device), _step_peak_mib(dense_step, device)
        what = "peak memory above the weights"
    else:
        m_sparse, m_dense = _saved_bytes(sparse_forward) / 2**20, _saved_bytes(dense_forward) / 2**20
        what = "activations saved for backward (cpu)"
    data = {"C": C, "layers": L, "batch": B, "sparse_step_s": t_sparse, "dense_step_s": t_dense,
            "sparse_mib": m_sparse, "dense_mib": m_dense, "memory_measure": what}
    return [
        Row("ISTA-NAS sparse search step (b + w)", setting, f"{_ms(t_sparse)}, {m_sparse:.0f} MiB", "1.00",
            f"memory: {what}", data=data),
        Row("DARTS dense supernet step (alpha + w)", setting, f"{_ms(t_dense)}, {m_dense:.0f} MiB",
            f"{t_dense / t_sparse:.1f}x time, {m_dense / max(m_sparse, 1e-9):.1f}x memory",
            "dense / sparse; the issue's claim: 10x", data=data),
    ]


# ---- the Trainer and the loader -------------------------------------------------------------------------------
def trainer_rows(ds: Any, device: torch.device, sizes: Sizes) -> list[Row]:
    """images/s of a plain loop, the Trainer in fp32 NCHW and in bf16 + channels_last (same model, data,
    optimizer and augmentation; a warm-up of two steps before each timed run)."""
    from nas_common.benchmarking import plain_loop_images_per_s, trainer_images_per_s
    from nas_common.config import resolve_config
    from nas_common.spaces.resnet import resnet_arch
    from nas_common.train import TrainConfig, Trainer

    split = ds.train.head(sizes.trainer_images)
    bs, epochs = sizes.trainer_batch, sizes.trainer_epochs
    setting = f"ResNet-{sizes.trainer_depth}, {len(split)} images x {epochs} epoch(s), batch {bs}"

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return resnet_arch(sizes.trainer_depth).build().to(device)

    def trainer(amp: str, channels_last: bool) -> float:
        config = resolve_config(TrainConfig, preset="paper", values={
            "epochs": epochs, "batch_size": bs, "eval_every": 0, "amp": amp, "channels_last": channels_last})
        return trainer_images_per_s(Trainer(model(), config, device=device, seed=0), split, bs)

    base = plain_loop_images_per_s(model(), split, bs, epochs, device)
    fp32 = trainer("off", False)
    mixed = trainer("bf16", True)
    amp_note = "bf16 autocast" if device.type == "cuda" else "cpu: autocast off, channels_last only"
    data = {"plain_images_per_s": base, "trainer_fp32_images_per_s": fp32, "trainer_bf16_cl_images_per_s": mixed}
    return [Row("plain PyTorch loop", setting, f"{base:.0f} images/s", "1.00", "fp32, NCHW", data=data),
            Row("Trainer fp32", setting, f"{fp32:.0f} images/s", f"{fp32 / base:.2f}x plain", "NCHW", data=data),
            Row("Trainer bf16 + channels_last", setting, f"{mixed:.0f} images/s", f"{mixed / fp32:.2f}x fp32",
                amp_note, data=data)]


def loader_row(ds: Any, device: torch.device, sizes: Sizes) -> Row:
    """Augmented training batches (crop + flip, normalised) from the device-resident loader."""
    from nas_common.data import make_loader

    loader = make_loader(ds.train, sizes.loader_batch, train=True, device=device, seed=0, channels_last=True)
    for i, _ in enumerate(loader):  # warm-up: the first pass copies the split to the device
        if i >= 2:
            break
    n = 0
    _sync(device)
    t0 = time.perf_counter()
    for epoch in range(sizes.loader_epochs):
        loader.set_epoch(epoch)
        for xb, _ in loader:
            n += xb.shape[0]
    _sync(device)
    rate = n / (time.perf_counter() - t0)
    return Row("DeviceLoader (train, augmented)", f"{len(ds.train)} images x {sizes.loader_epochs} epoch(s), "
               f"batch {sizes.loader_batch}, channels_last", f"{rate:.0f} images/s", "", "",
               data={"images_per_s": rate})


# ---- 2-process DDP ----------------------------------------------------------------------------------------
def ddp_row(method: str, single: Row | None, args: argparse.Namespace, sizes: Sizes, cap_s: float) -> Row:
    """The method's search steps under `torchrun --nproc-per-node 2` (this script's --ddp-child)."""
    setting = f"2 processes, {args.device_type}, same per-rank batch as 1 process (2x global)"
    row = Row(f"DDP search step: {method}", setting, "—")
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rank0.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "tools.bench.gpu", "--ddp-child", method, "--child-out", str(result), "--device", args.device_type,
               "--budget-s", str(cap_s)]
        if args.micro:
            cmd.append("--micro")
        if args.preset:
            cmd += ["--preset", args.preset]
        for o in args.override:
            cmd += ["-o", o]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        if args.device_type == "cpu":
            env["OMP_NUM_THREADS"] = "1"
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)  # its own process group: a timeout ends every rank
        try:
            out, err = p.communicate(timeout=cap_s + 30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            row.error = f"torchrun did not finish within {cap_s + 30:.0f} s (killed)"
            return row
        if not result.exists():
            tail = (err or out).strip().splitlines()[-1:] or [f"exit code {p.returncode}"]
            row.error = f"torchrun exited {p.returncode}: {tail[0][:300]}"
            return row
        got = json.loads(result.read_text())
    row.data, row.error, row.notes = got["data"], got["error"], got["notes"]
    med = got["data"].get("median_step_s")
    if med:
        row.result = f"{_ms(med)} / step"
        one = (single.data.get("median_step_s") if single is not None else None)
        if one:
            row.ratio = f"{med / one:.2f}x 1 process"
            row.notes = "; ".join(filter(None, [row.notes, f"weak-scaling efficiency {one / med:.2f}"]))
    return row


def ddp_child(args: argparse.Namespace, sizes: Sizes) -> int:
    """One rank of the DDP row: the same observed search; rank 0 writes its row as JSON."""
    from nas_common import dist
    from nas_common.io import atomic_write_json

    device = torch.device(args.device_type)
    dist.init_from_env(device)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank())
    ds = synthetic_cifar(sizes.n_train, sizes.n_test)
    # mode "warn": DDP's own bookkeeping may read on the host; the row counts it instead of stopping
    row = search_step_row(args.ddp_child, ds, device, sizes, args.budget_s, _overrides(args).get(args.ddp_child, {}),
                          args.preset, sync_mode="warn")
    if dist.is_main():
        atomic_write_json(args.child_out, {"data": row.data, "error": row.error, "notes": row.notes})
    return 0


# ---- the run ------------------------------------------------------------------------------------------------
def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from nas_common.config import parse_overrides
    from nas_common.errors import ConfigError

    out: dict[str, dict[str, Any]] = {}
    for item in args.override:
        method, sep, kv = item.partition(":")
        if not sep or "=" not in kv or not method.strip():
            raise ConfigError(f"-o {item!r} must be METHOD:KEY=VALUE, e.g. -o ista-nas:batch_size=96")
        out.setdefault(method.strip(), {}).update(parse_overrides([kv]))  # coerced by the config's types
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.gpu", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--micro", action="store_true", help="micro sizes (seconds on a CPU: the test suite's run)")
    ap.add_argument("--methods", default="all", help="all, or names from `nas list`, comma-separated")
    ap.add_argument("--preset", default=None, help="the methods' config preset (default: paper; tiny with --micro)")
    ap.add_argument("-o", "--override", action="append", default=[], metavar="METHOD:KEY=VALUE",
                    help="a config value of one method's search, e.g. -o bsn:val_size=5000 (repeatable)")
    ap.add_argument("--steps", type=int, default=None, help="timed search steps per method")
    ap.add_argument("--warmup", type=int, default=None, help="untimed search steps before them")
    ap.add_argument("--ddp", choices=["auto", "on", "off"], default="auto",
                    help="the 2-process row: auto = where two GPUs are visible; on = also 2 CPU processes (gloo)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated, of {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="wall-time budget of the whole run")
    ap.add_argument("--out", default=None, help="also write the rows and their numbers as JSON")
    ap.add_argument("--ddp-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from nas_common.device import resolve_device
    from nas_common.errors import ConfigError

    args.sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    if unknown := sorted(set(args.sections) - set(SECTIONS)):
        raise ConfigError(f"unknown --sections {', '.join(unknown)}: valid: {', '.join(SECTIONS)}")
    args.device_type = resolve_device(args.device).type
    return args


def sizes_of(args: argparse.Namespace) -> Sizes:
    from dataclasses import replace

    sizes = MICRO if args.micro else FULL
    if args.steps is not None:
        sizes = replace(sizes, steps=max(1, args.steps))
    if args.warmup is not None:
        sizes = replace(sizes, warmup=max(0, args.warmup))
    return sizes


def run(args: argparse.Namespace) -> list[Row]:
    from nas_common.runs import device_name

    from .harness import discover_methods

    sizes = sizes_of(args)
    device = torch.device(args.device_type)
    clock = Clock(args.budget_s)
    overrides = _overrides(args)
    methods = discover_methods(args.methods)
    print(f"tools.bench.gpu on {device_name(device)}, torch {torch.__version__}: methods {', '.join(methods)}; "
          f"budget {args.budget_s:.0f} s", flush=True)
    ds = synthetic_cifar(sizes.n_train, sizes.n_test)
    rows: list[Row] = []
    # the later sections' share of the budget (what they take at most on a GPU; on a CPU they are small)
    reserve = 0.4 * args.budget_s
    step_rows: dict[str, Row] = {}
    for i, m in enumerate(methods if "search" in args.sections else ()):
        share = (clock.left() - reserve) / (len(methods) - i)
        cap = clock.cap(min(sizes.method_cap_s, max(share, 15.0)), reserve=reserve / 2)
        if cap < 5.0:
            rows.append(Row(f"search step: {m}", "", "skipped", notes="the run's time budget is spent"))
            continue
        row = search_step_row(m, ds, device, sizes, cap, overrides.get(m, {}), args.preset)
        step_rows[m] = row
        rows.append(row)
        _progress(row, clock)

    def section(name: str, fn: Callable[[], list[Row]], want_s: float) -> None:
        cap = clock.cap(want_s)
        if cap < 3.0:
            rows.append(Row(name, "", "skipped", notes="the run's time budget is spent"))
            return
        try:
            with time_cap(cap):
                got = fn()
        except TimeCap:
            got = [Row(name, "", "—", error=f"time cap {cap:.0f} s reached")]
        except Exception as e:  # noqa: BLE001 - one section's failure is its row, the others still run
            got = [Row(name, "", "—", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")]
        finally:
            _free(device)
        rows.extend(got)
        for r in got:
            _progress(r, clock)

    if "ista" in args.sections:
        section("ISTA-NAS sparse vs dense supernet", lambda: ista_rows(device, sizes), 45.0)
    if "trainer" in args.sections:
        section("Trainer", lambda: trainer_rows(ds, device, sizes), 75.0)
    if "loader" in args.sections:
        section("DeviceLoader", lambda: [loader_row(ds, device, sizes)], 20.0)
    if "ddp" not in args.sections:
        return rows
    two_gpus = device.type == "cuda" and torch.cuda.device_count() >= 2
    ok = [m for m, r in step_rows.items() if r.error is None and r.data.get("median_step_s")]
    if args.ddp == "off" or (args.ddp == "auto" and not two_gpus):
        why = "--ddp off" if args.ddp == "off" else (
            f"{torch.cuda.device_count()} GPU visible" if device.type == "cuda" else "no GPUs")
        rows.append(Row("DDP search step (2 processes)", "", "skipped",
                        notes=f"{why}: needs two GPUs (--ddp on runs 2 CPU processes with gloo)"))
    elif not ok:
        rows.append(Row("DDP search step (2 processes)", "", "skipped", notes="no method's step row succeeded"))
    else:
        cap = clock.cap(120.0)
        if cap < 20.0:
            rows.append(Row("DDP search step (2 processes)", "", "skipped", notes="the run's time budget is spent"))
        else:
            rows.append(ddp_row(ok[0], step_rows[ok[0]], args, sizes, cap))
            _progress(rows[-1], clock)
    return rows


def _progress(row: Row, clock: Clock) -> None:
    used = clock.budget_s - clock.left()
    print(f"  [{used:5.0f} s] {row.benchmark}: {row.result}{'  ' + row.error if row.error else ''}", flush=True)


def table(rows: Sequence[Row]) -> str:
    from nas_common.benchmarking import markdown_table

    return markdown_table(HEADERS, [r.cells() for r in rows])


def main(argv: Sequence[str] | None = None) -> int:
    from nas_common.errors import NASError

    try:
        args = parse_args(argv)
        sizes = sizes_of(args)
        if args.ddp_child:
            return ddp_child(args, sizes)
        t0 = time.monotonic()
        rows = run(args)
        wall = time.monotonic() - t0
    except NASError as e:
        print(f"tools.bench.gpu: error: {e}", file=sys.stderr)
        return 2
    from nas_common.runs import device_name

    print(f"\n### tools.bench.gpu: {device_name(torch.device(args.device_type))}, torch {torch.__version__}, "
          f"{'micro' if args.micro else 'full'} sizes, synthetic CIFAR-shaped data, {wall:.0f} s\n")
    print(table(rows))
    if args.out:
        from nas_common.io import atomic_write_json

        atomic_write_json(args.out, {"device": device_name(torch.device(args.device_type)),
                                     "torch": torch.__version__, "micro": args.micro, "wall_s": wall,
                                     "rows": [asdict(r) for r in rows]})
        print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
