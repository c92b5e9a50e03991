"""A run directory: everything one search or training run writes, what makes it resumable, and how a
finished run is read back.

    DIR/.nas-run         the marker: this folder is a nas run (only such a folder is ever overwritten)
    DIR/config.toml      the record: kind, method, dataset, seed, budget and the resolved config
    DIR/arch.json        the architecture (found or trained)
    DIR/metrics.jsonl    one JSON object per logged step (key "step")
    DIR/tb/              TensorBoard scalars
    DIR/checkpoints/     last.pt, written atomically (see "Checkpoints"); best.pt (the best epoch by the
                         metric the method or the Trainer names) and, with keep > 1, epoch-NNNN.pt of
                         the `keep` best epochs
    DIR/model.pt         trained weights with their architecture ("nas-model/1"), when there are any
    DIR/result.json      final numbers with provenance (versions, device, seed, git commit, wall time)

Only rank 0 writes. A directory that holds another run is refused unless `resume` or `overwrite`;
`overwrite` replaces only a folder that carries the marker, and only the files a run writes.

Checkpoints (`Run.save_state` / `Run.resume`), format "nas-ckpt/2": a dict with
    format        "nas-ckpt/2"
    epoch         epochs completed;  step: a finer counter if the run keeps one (else None)
    log_step      the last `step` logged to metrics.jsonl (a resume drops later records)
    record        the run's config.toml record (what made the run)
    versions      package versions; world_size: the ranks that wrote it
    rng           every rank's RNG states (python, numpy, torch, cuda), indexed by rank
    model         {name: state_dict} of the modules (a single module is stored as "model")
    optimizers    {name: state_dict};  schedulers: {name: state_dict};  scaler: state_dict or None
    extra         {name: value}: whatever else the run needs to continue exactly (tensors, Python values)
    best          [{"epoch", "value"}] of the best epochs so far (by `track_best`'s metric), best first
Components are saved and restored by name, so a method lists what it has and `resume` puts each back.

Metric names follow one scheme, `PHASE/QUANTITY` (see `canonical_metric`): phases `train`, `valid`,
`test`, `search`; quantities `loss` (mean cross-entropy, nats), `top1`/`top5` (percent), `lr`,
`time_s`, `images_per_s`, ... TensorBoard tags are grouped that way, and `write_result` records the
run's hyperparameters with `add_hparams`.
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from . import dist
from .arch import Arch, load_arch, save_arch
from .config import load_toml, resolve_config, to_toml
from .errors import ConfigError, RunError
from .io import append_line, atomic_link, atomic_save, atomic_write_json, atomic_write_text
from .log import get_logger, progress_enabled

if TYPE_CHECKING:
    from .methods import Task

T = TypeVar("T")

CHECKPOINT_FORMAT = "nas-ckpt/2"
MODEL_FORMAT = "nas-model/1"
MARKER = ".nas-run"
MARKER_FORMAT = "nas-run/1"
INTERRUPT_ENV = "NAS_INTERRUPT_AFTER_EPOCH"
#: what a run writes: `--overwrite` removes these and nothing else
RUN_FILES = ("config.toml", "arch.json", "metrics.jsonl", "tb", "checkpoints", "model.pt", "result.json", MARKER)
PHASES = ("train", "valid", "test", "search")
_PREFIXES = {"train_": "train/", "valid_": "valid/", "val_": "valid/", "test_": "test/", "search_": "search/"}

log = get_logger("run")


def canonical_metric(key: str, kind: str | None = None) -> str:
    """The `PHASE/QUANTITY` name of a metric: `train_loss` -> `train/loss`, `val_acc` -> `valid/acc`;
    a name that has a phase already is kept; one without (`lr`, `frozen`) goes under the run's own
    phase (`train/` for a training run, `search/` otherwise)."""
    if "/" in key:
        return key
    for prefix, phase in _PREFIXES.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            return phase + key[len(prefix):]
    return ("train/" if kind == "train" else "search/") + key


class RunInterrupted(Exception):
    """Raised after the checkpoint of epoch `interrupt_after` is written (a test hook, like a kill)."""


# ---- provenance ---------------------------------------------------------------------------------

def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    names = ["nas-common", "nat-nas", "bsn-nas", "tas-nas", "ista-nas", "posterior-nas", "torch", "torchvision",
             "numpy"]
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def device_name(device: torch.device | str | None) -> str:
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device | str | None = None, seed: int | None = None) -> dict[str, Any]:
    """How a result was made: versions, device, seed, git commit, host, command line."""
    return {
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "device": str(device) if device is not None else "cpu",
        "device_name": device_name(device),
        "seed": seed,
        "git_commit": _git_commit(),
        "host": platform.node(),
        "argv": sys.argv,
        "world_size": dist.world_size(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ---- RNG ------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA), offset by rank so ranks draw different noise."""
    s = seed + dist.rank()
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ---- what a resume gives back -------------------------------------------------------------------------

@dataclass
class Resumed:
    """The position a resumed run continues from (its components are already restored)."""

    epoch: int
    step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Components = Mapping[str, Any] | Any  # a mapping name -> object with state_dict(), or one such object


def _named(components: Components | None, default: str) -> dict[str, Any]:
    if components is None:
        return {}
    if isinstance(components, Mapping):
        return dict(components)
    return {default: components}


def _state_dict(obj: Any) -> Any:
    return dist.unwrap(obj).state_dict() if isinstance(obj, torch.nn.Module) else obj.state_dict()


# ---- the run ----------------------------------------------------------------------------------------

class Run:
    """One run directory. `Run.create` opens one for writing (or resuming), `Run.open` a finished one
    for reading; methods and the Trainer log and checkpoint through it."""

    def __init__(self, path: str | Path, *, resume: bool = False, interrupt_after: int | None = None,
                 progress: bool = True, record: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.resume_requested = resume
        env = os.environ.get(INTERRUPT_ENV)
        self.interrupt_after = interrupt_after if interrupt_after is not None else (int(env) if env else None)
        self._hard_interrupt = interrupt_after is None and env is not None
        self.show_progress = progress
        self._record = record
        self._tb: Any = None
        self._t0 = time.time()
        self._log_step = 0
        self._latest: dict[str, Any] = {}  # the last logged value of each metric (canonical names)
        self._best_metric: str | None = None
        self._best_mode = "max"
        self._keep = 1
        self._best: list[dict[str, Any]] = []  # [{"epoch", "value"}], best first

    # -- creation -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any] | None = None, *, resume: bool = False,
               overwrite: bool = False, interrupt_after: int | None = None, progress: bool = True,
               dry_run: bool = False) -> Run:
        """Open `path` for a new run (refusing one that holds another run) or for resuming it.

        Every refusal comes before anything is written. `dry_run` makes only the checks (a caller that
        has more checks of its own runs them in between, then creates the run)."""
        p = check_output_dir(path, resume=resume, overwrite=overwrite)
        holds_run = _holds_run(p)
        if resume and not holds_run:
            resume = False  # nothing to resume: start fresh (like Lightning's ckpt_path="last" hint)
        if resume and config is not None and (p / "config.toml").exists():
            old = _read_toml(p / "config.toml")
            new = tomllib.loads(to_toml(config))
            if _strip_volatile(old) != _strip_volatile(new):
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise RunError(f"{str(p)!r} was made with a different {', '.join(changed)}: resume with the same "
                               f"options, or pass --overwrite to start again")
        if dry_run:
            return cls(p, resume=resume, interrupt_after=interrupt_after, progress=progress, record=config)
        dist.barrier()  # every rank has looked at the directory before rank 0 changes it (else ranks disagree)
        if dist.is_main():
            if overwrite and holds_run:
                for f in RUN_FILES:
                    q = p / f
                    if q.is_dir() and not q.is_symlink():
                        shutil.rmtree(q)
                    elif q.exists() or q.is_symlink():
                        q.unlink()
            p.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(p)
            if not (p / MARKER).exists():
                atomic_write_json(p / MARKER, {"format": MARKER_FORMAT, "kind": (config or {}).get("kind"),
                                               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            if config is not None:
                atomic_write_text(p / "config.toml", to_toml(config))
        run = cls(p, resume=resume, interrupt_after=interrupt_after, progress=progress, record=config)
        if resume and not run.checkpoint_path.exists():
            run._trim_metrics(0)  # killed before its first checkpoint: it starts again, so do its metrics
        dist.barrier()
        return run

    @classmethod
    def open(cls, path: str | Path, *, method: str | None = None, task: Task | None = None,
             same_seed: bool = True) -> Run:
        """A finished (or stopped) run, for reading: `.record`, `.config(cls)`, `.arch`, `.result`,
        `.final_state()`, `.load_final(...)`, `.model()`.

        With `method`, the run must be a `nas search <method>` run; with `task`, it must have been made
        on the task's dataset and (with `same_seed`) with its seed, since held-out splits depend on both.
        One-line RunError/ConfigError otherwise."""
        p = Path(path)
        what = f"`nas search {method}`" if method else "`nas search` or `nas train`"
        if not p.is_dir():
            raise RunError(f"run directory {str(p)!r} does not exist: give the --out directory of a finished "
                           f"{what} run")
        f = p / "config.toml"
        if not f.is_file():
            raise RunError(f"{f} does not exist: give the --out directory of a finished {what} run")
        record = _read_toml(f)
        if method is not None and record.get("method") != method:
            raise RunError(f"{str(p)!r} holds a {record.get('method') or record.get('kind')!r} run, not a {what} run")
        if task is not None:
            if same_seed and "seed" in record and int(record["seed"]) != task.seed:
                raise ConfigError(f"{str(p)!r} was searched with seed {record['seed']} but the task has seed "
                                  f"{task.seed}: its held-out data depends on the seed, so pass a Task with "
                                  f"seed={record['seed']}")
            if record.get("dataset", task.dataset.name) != task.dataset.name:
                made, whose = ("searched", "search's") if record.get("kind") == "search" else ("trained", "run's")
                raise ConfigError(f"{str(p)!r} was {made} on {record['dataset']!r}, the task's data is "
                                  f"{task.dataset.name!r}: pass a Task on the {whose} dataset")
        return cls(p, record=record, progress=False)

    # -- what the run is ----------------------------------------------------------------------------
    @property
    def record(self) -> dict[str, Any]:
        """The config.toml record (kind, method, preset, dataset, seed, budget, config)."""
        if self._record is None:
            self._record = _read_toml(self.path / "config.toml")
        return self._record

    def config(self, cls: type[T]) -> T:
        """The run's resolved config as `cls` (the method's or the Trainer's config class)."""
        return resolve_config(cls, preset=None, file=self.record.get("config", {}))

    @property
    def arch(self) -> Arch:
        return load_arch(self.path / "arch.json")

    def load_arch(self) -> Arch:
        return self.arch

    @property
    def result(self) -> dict[str, Any]:
        f = self.path / "result.json"
        if not f.is_file():
            raise RunError(f"{str(self.path)!r} has no result.json: the run has not finished "
                           f"(continue it with --resume)")
        try:
            return json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{f} is not valid JSON ({e}): the run did not finish writing it") from None

    def model(self, map_location: Any = "cpu") -> torch.nn.Module:
        return load_model(self.path, map_location)

    # -- logging --------------------------------------------------------------------------------
    @property
    def tb(self) -> Any:
        if self._tb is None and dist.is_main():
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tb"))
        return self._tb

    @property
    def kind(self) -> str | None:
        return (self._record or {}).get("kind")

    def log(self, step: int, **metrics: Any) -> None:
        """Append one record to metrics.jsonl and scalars to TensorBoard (tags grouped as `PHASE/QUANTITY`,
        see `canonical_metric`), and log one line (rank 0 only). Call it once per epoch."""
        self._log_step = max(self._log_step, int(step))
        rec = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._latest[canonical_metric(k, self.kind)] = (int(step), float(v))
        if not dist.is_main():
            return
        append_line(self.path / "metrics.jsonl", json.dumps(rec))
        tb = self.tb
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                tb.add_scalar(canonical_metric(k, self.kind), v, step)
        tb.flush()
        if log.isEnabledFor(20):
            what = self._record.get("method") if self._record else None
            head = f"{what or self.kind or 'run'} {self.path.name}" if (what or self.kind) else str(self.path)
            log.info("%s step %s: %s", head, step, "  ".join(f"{k} {_fmt_value(v)}" for k, v in metrics.items()))

    def metrics(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.path / "metrics.jsonl")

    def progress(self, iterable: Iterable[T], desc: str = "", total: int | None = None, leave: bool = False
                 ) -> Iterator[T]:
        """A tqdm.auto bar on rank 0 (a widget in Jupyter) when progress is on and stderr is a terminal;
        NAS_PROGRESS=1 forces bars, NAS_PROGRESS=0 turns them off (see nas_common.log). Without bars,
        `log` still writes one line per epoch."""
        from tqdm.auto import tqdm

        show = dist.is_main() and progress_enabled(self.show_progress)
        return iter(tqdm(iterable, desc=desc, total=total, leave=leave, disable=not show, dynamic_ncols=True))

    # -- the best epochs ------------------------------------------------------------------------
    def track_best(self, metric: str | None, mode: str = "max", keep: int = 1) -> None:
        """Keep checkpoints/best.pt, the checkpoint of the epoch with the best `metric` (a canonical
        name, e.g. "valid/top1"; `mode` "max" or "min"), beside last.pt; with `keep` > 1 also
        checkpoints/epoch-NNNN.pt of the `keep` best epochs. `keep` 0 or metric None: none."""
        if mode not in ("max", "min"):
            raise ConfigError(f"track_best mode must be 'max' or 'min', got {mode!r}")
        check_keep(keep)
        self._best_metric = canonical_metric(metric, self.kind) if metric else None
        self._best_mode = mode
        self._keep = keep

    @property
    def best_path(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def best(self) -> list[dict[str, Any]]:
        """[{"epoch", "value"}] of the kept best epochs, best first."""
        return [dict(b) for b in self._best]

    def _update_best(self, epoch: int, ranked: list[dict[str, Any]]) -> None:
        """After last.pt of `epoch` is written: link it as best.pt (and epoch-NNNN.pt with keep > 1) when
        it ranks among the `keep` best, and drop the epoch files that fell out (rank 0)."""
        old = {b["epoch"] for b in self._best}
        new = {b["epoch"] for b in ranked}
        self._best = [dict(b) for b in ranked]
        if epoch not in new or epoch in old:
            return
        ckpt_dir = self.checkpoint_path.parent
        if ranked[0]["epoch"] == epoch:
            atomic_link(self.checkpoint_path, self.best_path)
        if self._keep > 1:
            atomic_link(self.checkpoint_path, ckpt_dir / f"epoch-{int(epoch):04d}.pt")
            for e in old - new:
                (ckpt_dir / f"epoch-{int(e):04d}.pt").unlink(missing_ok=True)

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    def save_state(self, epoch: int, *, model: Components | None = None, optimizers: Components | None = None,
                   schedulers: Components | None = None, scaler: Any = None, extra: Mapping[str, Any] | None = None,
                   step: int | None = None) -> None:
        """Checkpoint the run after `epoch` completed epochs (atomically; rank 0 writes, every rank's RNG
        state is kept). Then the test hook may interrupt the run (`interrupt_after`)."""
        rngs = dist.gather_objects(rng_state())
        if dist.is_main():
            payload = {
                "format": CHECKPOINT_FORMAT, "epoch": int(epoch), "step": step, "log_step": self._log_step,
                "record": self._record, "versions": package_versions(), "world_size": dist.world_size(),
                "rng": rngs,
                "model": {k: _state_dict(v) for k, v in _named(model, "model").items()},
                "optimizers": {k: v.state_dict() for k, v in _named(optimizers, "optimizer").items()},
                "schedulers": {k: v.state_dict() for k, v in _named(schedulers, "scheduler").items()},
                "scaler": scaler.state_dict() if scaler is not None else None,
                "extra": dict(extra or {}),
                "best": self._best_after(epoch),
            }
            atomic_save(payload, self.checkpoint_path)
            self._update_best(epoch, payload["best"])
        dist.barrier()
        self._maybe_interrupt(epoch)

    def _best_after(self, epoch: int) -> list[dict[str, Any]]:
        """What `best` will be once `epoch` is ranked (saved in the checkpoint, so a resume keeps it)."""
        if not self._best_metric or self._keep < 1 or self._best_metric not in self._latest:
            return self.best
        step, value = self._latest[self._best_metric]
        if step != self._log_step or not math.isfinite(value) or any(b["epoch"] == epoch for b in self._best):
            return self.best
        ranked = self.best + [{"epoch": int(epoch), "value": value}]
        ranked.sort(key=lambda b: (-b["value"] if self._best_mode == "max" else b["value"], b["epoch"]))
        return ranked[: self._keep]

    def resume(self, *, model: Components | None = None, optimizers: Components | None = None,
               schedulers: Components | None = None, scaler: Any = None, map_location: Any = "cpu") -> Resumed | None:
        """When resuming and a checkpoint exists: restore every named component from it, this rank's RNG
        states, drop metrics logged after it, and return where to continue; else None (start afresh)."""
        if not self.resume_requested or not self.checkpoint_path.exists():
            return None
        state = self._load_checkpoint(map_location)
        source = str(self.checkpoint_path)
        for kind, given in (("model", _named(model, "model")), ("optimizers", _named(optimizers, "optimizer")),
                            ("schedulers", _named(schedulers, "scheduler"))):
            saved = state.get(kind) or {}
            missing = sorted(set(given) - set(saved))
            if missing:
                raise RunError(f"{source} has no {kind} {', '.join(missing)} (it holds {', '.join(saved) or 'none'}): "
                               f"it was written by another version of this run; pass --overwrite to start again")
            for name, obj in given.items():
                try:
                    (dist.unwrap(obj) if isinstance(obj, torch.nn.Module) else obj).load_state_dict(saved[name])
                except (RuntimeError, ValueError, KeyError) as e:
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise RunError(f"{source}: {kind} {name!r} does not fit ({first}); pass --overwrite to "
                                   f"start again") from None
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rngs = state.get("rng") or []
        if len(rngs) == dist.world_size():
            set_rng_state(rngs[dist.rank()])
        elif rngs:
            dist.rank_zero_warn(f"{source} was written by {len(rngs)} rank(s), this run has {dist.world_size()}: "
                                f"every rank continues from rank 0's random state, so the resumed run is valid "
                                f"but not bit-identical to an uninterrupted one")
            set_rng_state(rngs[0])
        self._log_step = int(state.get("log_step") or state["epoch"])
        self._best = [dict(b) for b in state.get("best") or []]
        self._trim_metrics(self._log_step)
        return Resumed(epoch=int(state["epoch"]), step=state.get("step"), extra=dict(state.get("extra") or {}))

    def final_state(self, epochs: int | None = None, map_location: Any = "cpu", keys: Iterable[str] = ()
                    ) -> dict[str, Any]:
        """The last checkpoint of a run that finished its `epochs` and saved the `model` components
        `keys`; one-line RunError for a missing, unreadable or foreign checkpoint, or an unfinished run
        (saying how to resume it)."""
        what = f"`nas search {self.record.get('method')}`" if self.record.get("method") else "nas"
        if not self.checkpoint_path.is_file():
            raise RunError(f"{self.checkpoint_path} does not exist: give the --out directory of a finished "
                           f"{what} run")
        state = self._load_checkpoint(map_location)
        missing = [k for k in keys if k not in (state.get("model") or {})]
        if missing:
            raise RunError(f"{self.checkpoint_path} holds no {', '.join(missing)}: it is not a checkpoint of "
                           f"a {what} run")
        if epochs is not None and int(state["epoch"]) < epochs:
            raise RunError(f"the run in {str(self.path)!r} stopped after epoch {state['epoch']} of {epochs}: "
                           f"finish it with `... --out {self.path} --resume`")
        return state

    def load_final(self, epochs: int | None = None, *, model: Components | None = None,
                   map_location: Any = "cpu") -> dict[str, Any]:
        """Load the final checkpoint's `model` components into the given modules; returns its `extra`."""
        given = _named(model, "model")
        state = self.final_state(epochs, map_location, keys=given)
        for name, module in given.items():
            try:
                dist.unwrap(module).load_state_dict(state["model"][name])
            except RuntimeError:
                raise RunError(f"the {name!r} saved in {self.checkpoint_path} does not fit the network built for "
                               f"this task (other classes or input shape?): use the task the run was made "
                               f"with") from None
        return dict(state.get("extra") or {})

    def _load_checkpoint(self, map_location: Any) -> dict[str, Any]:
        try:
            state = torch.load(self.checkpoint_path, map_location=map_location, weights_only=False)
        except Exception as e:  # a truncated or foreign file: whatever torch.load raises
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RunError(f"cannot read checkpoint {self.checkpoint_path}: {first}; pass --overwrite to start "
                           f"again") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            fmt = state.get("format") if isinstance(state, dict) else None
            raise RunError(f"{self.checkpoint_path} is not a {CHECKPOINT_FORMAT} checkpoint (format {fmt!r}): "
                           f"pass --overwrite to start again")
        return state

    def _maybe_interrupt(self, epoch: int) -> None:
        if self.interrupt_after is not None and epoch >= self.interrupt_after:
            if self._hard_interrupt:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(75)  # like a kill: no cleanup, no result
            raise RunInterrupted(f"interrupted after epoch {epoch} (test hook)")

    def _trim_metrics(self, last_step: int) -> None:
        """Drop metrics.jsonl records logged after the checkpoint (written before a kill)."""
        f = self.path / "metrics.jsonl"
        if not dist.is_main() or not f.exists():
            return
        recs = _read_jsonl(f)
        keep = [r for r in recs if int(r.get("step", 0)) <= last_step]
        raw = [ln for ln in f.read_text(errors="replace").splitlines() if ln.strip()]
        if len(keep) != len(raw):
            atomic_write_text(f, "".join(json.dumps(r) + "\n" for r in keep))

    # -- results --------------------------------------------------------------------------------
    def save_arch(self, arch: Arch) -> Path | None:
        return save_arch(arch, self.path / "arch.json") if dist.is_main() else None

    def save_model(self, model: torch.nn.Module, arch: Arch) -> Path | None:
        """Write the trained weights as model.pt (with the arch), so `load_model(DIR)` rebuilds them."""
        if not dist.is_main():
            return None
        module = dist.unwrap(model)
        payload = {"format": MODEL_FORMAT, "arch": arch.to_dict(),
                   "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}}
        atomic_save(payload, self.path / "model.pt")
        return self.path / "model.pt"

    def write_result(self, result: dict[str, Any], device: Any = None, seed: int | None = None) -> None:
        if not dist.is_main():
            return
        out = {**{k: _jsonable(v) for k, v in result.items()}, "wall_time_s": time.time() - self._t0,
               "provenance": provenance(device, seed)}
        atomic_write_json(self.path / "result.json", out)
        self._write_hparams(out)

    def _write_hparams(self, result: dict[str, Any]) -> None:
        """The run's hyperparameters (its resolved config, seed, dataset, method) and final numbers as
        TensorBoard hparams, so runs compare side by side in its HPARAMS tab."""
        record = self._record or {}
        hp: dict[str, Any] = {k: record[k] for k in ("kind", "method", "dataset", "seed", "preset") if k in record}
        for k, v in _flatten(record.get("config") or {}).items():
            hp[k] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
        for k, v in (record.get("budget") or {}).items():
            hp[f"budget/{k}"] = v
        metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
        final = {canonical_metric(k, self.kind): float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        final = {f"hparam/{k}": v for k, v in final.items()}
        if not hp or not final:
            return
        try:
            self.tb.add_hparams(hp, final, run_name="hparams")
            self.tb.flush()
        except (TypeError, ValueError) as e:  # a value TensorBoard cannot take: the run itself is fine
            log.debug("add_hparams skipped: %s", e)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def check_keep(keep: object) -> int:
    """`keep` (how many best checkpoints to keep, --keep-best) as an integer >= 0, or a ConfigError."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ConfigError(f"keep must be an integer >= 0 (the best checkpoints to keep, --keep-best), got {keep!r}")
    return keep


def check_output_dir(path: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """The run directory `path` after the checks that precede any write: a usable place, and either new,
    resumable (`resume`) or a nas run that may be replaced (`overwrite`). One-line RunError otherwise."""
    if resume and overwrite:
        raise RunError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                       "--overwrite replaces it; pass one")
    if str(path).strip() == "":
        raise RunError("--out is empty: name the run directory to write (e.g. --out runs/search1)")
    p = Path(path)
    for parent in [p, *p.parents]:
        if parent.exists() and not parent.is_dir():
            where = "" if parent == p else f" ({str(parent)!r} is a file)"
            raise RunError(f"--out {str(p)!r} cannot be a directory{where}: choose another --out")
        if parent.exists():
            break
    holds_run = _holds_run(p)
    if holds_run and not (resume or overwrite):
        raise RunError(f"{str(p)!r} already holds a run: pass --resume to continue it, "
                       f"--overwrite to replace it, or choose another --out")
    if overwrite and holds_run and not (p / MARKER).is_file():
        raise RunError(f"{str(p)!r} is not a nas run directory (it has no {MARKER} marker) but holds "
                       f"{', '.join(f for f in RUN_FILES if (p / f).exists())}: --overwrite replaces only what a "
                       f"nas run wrote; choose another --out or move those files yourself")
    return p


def _remove_stale_temporaries(p: Path) -> None:
    """Delete the temporary files a kill left behind (`.NAME.*.tmp`, see nas_common.io): never the
    files themselves, which were only ever replaced whole."""
    for d in (p, p / "checkpoints"):
        if d.is_dir():
            for f in d.glob(".*.tmp"):
                if f.is_file():
                    f.unlink(missing_ok=True)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return f"{float(v):.4g}"
    return str(v)


def _holds_run(p: Path) -> bool:
    return p.is_dir() and any((p / f).exists() for f in ("config.toml", "checkpoints", "result.json",
                                                         "metrics.jsonl", MARKER))


def _read_toml(f: Path) -> dict[str, Any]:
    try:
        f.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RunError(f"{f} is not a text file: it is not a nas run's config.toml") from None
    except OSError:
        pass  # load_toml says what is wrong
    return load_toml(f)


def _read_jsonl(f: Path) -> list[dict[str, Any]]:
    if not f.exists():
        return []
    out = []
    for line in f.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    return out


def _strip_volatile(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in ("resume", "overwrite", "device", "epochs_done")}


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def load_model(run_dir: str | Path, map_location: Any = "cpu") -> torch.nn.Module:
    """The trained nn.Module of a run directory: arch.json built, model.pt weights loaded."""
    p = Path(run_dir)
    if not p.is_dir():
        raise RunError(f"run directory {str(p)!r} does not exist: give the --out of a `nas train` or `nas search`")
    weights = p / "model.pt"
    if not weights.exists():
        raise RunError(f"{str(p)!r} holds no trained model (model.pt): "
                       f"train one with `nas train {p / 'arch.json'} ...`")
    arch = load_arch(p / "arch.json")
    model = arch.build()
    try:
        payload = torch.load(weights, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"cannot read {weights}: {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise RunError(f"{weights} is not a nas model file")
    if Arch.from_dict(payload["arch"]) != arch:
        raise RunError(f"{weights} was trained for a different architecture than {p / 'arch.json'}")
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    if missing or unexpected:
        raise RunError(f"{weights} does not fit {p / 'arch.json'}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()
