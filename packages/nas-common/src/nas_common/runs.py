"""A run directory: everything one search or training run writes, and what makes it resumable.

    DIR/config.toml      the resolved config (and what kind of run, method, dataset, seed)
    DIR/arch.json        the architecture (found or trained)
    DIR/metrics.jsonl    one JSON object per logged step/epoch
    DIR/tb/              TensorBoard scalars
    DIR/checkpoints/     last.pt, written atomically every epoch (model, optimizers, RNG states, step)
    DIR/result.json      final numbers with provenance (versions, device, seed, git commit, wall time)

Only rank 0 writes. A directory that holds another run is refused unless `resume` or `overwrite`.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from . import dist
from .arch import Arch, atomic_write_text, load_arch, save_arch
from .config import load_toml, to_toml
from .errors import ConfigError, RunError

if TYPE_CHECKING:
    from .methods import Task

T = TypeVar("T")

CHECKPOINT_FORMAT = "nas-ckpt/1"
MODEL_FORMAT = "nas-model/1"
INTERRUPT_ENV = "NAS_INTERRUPT_AFTER_EPOCH"
_RUN_FILES = ("config.toml", "checkpoints", "result.json", "metrics.jsonl")


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
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n)
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


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- the run ----------------------------------------------------------------------------------------

class Run:
    """One run directory. Create with `Run.create`; methods and the Trainer log and checkpoint through it."""

    def __init__(self, path: str | Path, *, resume: bool = False, interrupt_after: int | None = None,
                 progress: bool = True) -> None:
        self.path = Path(path)
        self.resume = resume
        env = os.environ.get(INTERRUPT_ENV)
        self.interrupt_after = interrupt_after if interrupt_after is not None else (int(env) if env else None)
        self._hard_interrupt = interrupt_after is None and env is not None
        self.show_progress = progress
        self._tb: Any = None
        self._t0 = time.time()

    # -- creation -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any] | None = None, *, resume: bool = False,
               overwrite: bool = False, interrupt_after: int | None = None, progress: bool = True) -> Run:
        """Open `path` for a new run (refusing one that holds another run) or for resuming."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise RunError(f"output {str(p)!r} is a file, not a directory: choose another --out")
        holds_run = p.is_dir() and any((p / f).exists() for f in _RUN_FILES)
        if holds_run and not (resume or overwrite):
            raise RunError(f"{str(p)!r} already holds a run: pass --resume to continue it, "
                           f"--overwrite to replace it, or choose another --out")
        if resume and not holds_run:
            resume = False  # nothing to resume: start fresh (like Lightning's ckpt_path="last" hint)
        if resume and config is not None and (p / "config.toml").exists():
            import tomllib

            old = tomllib.loads((p / "config.toml").read_text())
            new = tomllib.loads(to_toml(config))
            if _strip_volatile(old) != _strip_volatile(new):
                raise RunError(f"{str(p)!r} was made with a different config; resume with the same options "
                               f"or pass --overwrite to start again")
        dist.barrier()  # every rank has looked at the directory before rank 0 changes it (else ranks disagree)
        if dist.is_main():
            if overwrite and holds_run:
                for f in (*_RUN_FILES, "arch.json", "tb", "model.pt"):
                    q = p / f
                    if q.is_dir():
                        shutil.rmtree(q)
                    elif q.exists():
                        q.unlink()
            p.mkdir(parents=True, exist_ok=True)
            if config is not None:
                atomic_write_text(p / "config.toml", to_toml(config))
        dist.barrier()
        return cls(p, resume=resume, interrupt_after=interrupt_after, progress=progress)

    # -- logging --------------------------------------------------------------------------------
    @property
    def tb(self) -> Any:
        if self._tb is None and dist.is_main():
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tb"))
        return self._tb

    def log(self, step: int, **metrics: Any) -> None:
        """Append one record to metrics.jsonl and scalars to TensorBoard (rank 0 only)."""
        if not dist.is_main():
            return
        rec = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        tb = self.tb
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                tb.add_scalar(k, v, step)
        tb.flush()

    def metrics(self) -> list[dict[str, Any]]:
        f = self.path / "metrics.jsonl"
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []

    def progress(self, iterable: Iterable[T], desc: str = "", total: int | None = None, leave: bool = False
                 ) -> Iterator[T]:
        """A tqdm bar on rank 0 (when progress is on and stderr is a terminal or NAS_PROGRESS=1)."""
        from tqdm.auto import tqdm

        show = self.show_progress and dist.is_main() and (sys.stderr.isatty() or os.environ.get("NAS_PROGRESS") == "1")
        return iter(tqdm(iterable, desc=desc, total=total, leave=leave, disable=not show, dynamic_ncols=True))

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    def checkpoint(self, state: dict[str, Any], epoch: int) -> None:
        """Save `state` (plus RNG states and `epoch`) atomically as checkpoints/last.pt.

        `epoch` is the number of epochs completed. Afterwards the test hook may interrupt the run.
        """
        if dist.is_main():
            payload = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "rng": rng_state(),
                       "versions": package_versions(), **state}
            atomic_torch_save(payload, self.checkpoint_path)
        dist.barrier()
        if self.interrupt_after is not None and epoch >= self.interrupt_after:
            if self._hard_interrupt:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(75)  # like a kill: no cleanup, no result
            raise RunInterrupted(f"interrupted after epoch {epoch} (test hook)")

    def restore(self, map_location: Any = "cpu") -> dict[str, Any] | None:
        """When resuming: the last checkpoint's state (RNG states restored), else None."""
        if not self.resume or not self.checkpoint_path.exists():
            return None
        try:
            state = torch.load(self.checkpoint_path, map_location=map_location, weights_only=False)
        except Exception as e:  # a truncated or foreign file
            raise RunError(f"cannot read checkpoint {self.checkpoint_path}: {e}; "
                           f"pass --overwrite to start again") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise RunError(f"{self.checkpoint_path} is not a nas checkpoint; pass --overwrite to start again")
        set_rng_state(state["rng"])
        return state

    # -- results --------------------------------------------------------------------------------
    def save_arch(self, arch: Arch) -> Path | None:
        return save_arch(arch, self.path / "arch.json") if dist.is_main() else None

    def load_arch(self) -> Arch:
        return load_arch(self.path / "arch.json")

    def save_model(self, model: torch.nn.Module, arch: Arch) -> Path | None:
        """Write the trained weights as model.pt (with the arch), so `load_model(DIR)` rebuilds them."""
        if not dist.is_main():
            return None
        module = getattr(model, "module", model)  # unwrap DDP
        payload = {"format": MODEL_FORMAT, "arch": arch.to_dict(),
                   "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}}
        atomic_torch_save(payload, self.path / "model.pt")
        return self.path / "model.pt"

    def write_result(self, result: dict[str, Any], device: Any = None, seed: int | None = None) -> None:
        if not dist.is_main():
            return
        out = {**{k: _jsonable(v) for k, v in result.items()}, "wall_time_s": time.time() - self._t0,
               "provenance": provenance(device, seed)}
        atomic_write_text(self.path / "result.json", json.dumps(out, indent=2) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


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
        payload = torch.load(weights, map_location=map_location, weights_only=False)
    except Exception as e:
        raise RunError(f"cannot read {weights}: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise RunError(f"{weights} is not a nas model file")
    if Arch.from_dict(payload["arch"]) != arch:
        raise RunError(f"{weights} was trained for a different architecture than {p / 'arch.json'}")
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    if missing or unexpected:
        raise RunError(f"{weights} does not fit {p / 'arch.json'}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


# ---- reading a finished search back (the harness's ranking hooks, analysis tools) -------------------
def read_search_record(run_dir: str | Path, method: str, task: Task | None = None, *, same_seed: bool = True
                       ) -> dict[str, Any]:
    """The config.toml record of a `nas search <method>` run (kind, method, dataset, seed, budget, config).

    With `task`, the run must have been searched on the task's dataset and, with `same_seed`, with its
    seed (methods whose held-out data depends on the seed need both to score a run again). One-line
    RunError/ConfigError otherwise.
    """
    p = Path(run_dir)
    f = p / "config.toml"
    if not f.is_file():
        raise RunError(f"{f} does not exist: give the --out directory of a finished `nas search {method}` run")
    record = load_toml(f)
    if record.get("method") != method:
        raise RunError(f"{str(p)!r} holds a {record.get('method')!r} run, not a `nas search {method}` run")
    if task is not None:
        if same_seed and "seed" in record and int(record["seed"]) != task.seed:
            raise ConfigError(f"{str(p)!r} was searched with seed {record['seed']} but the task has seed {task.seed}: "
                              f"its held-out data depends on the seed, so pass a Task with seed={record['seed']}")
        if record.get("dataset", task.dataset.name) != task.dataset.name:
            raise ConfigError(f"{str(p)!r} was searched on {record['dataset']!r}, the task's data is "
                              f"{task.dataset.name!r}: pass a Task on the search's dataset")
    return record


def load_final_checkpoint(run_dir: str | Path, method: str, epochs: int, map_location: Any = "cpu",
                          keys: Iterable[str] = ()) -> dict[str, Any]:
    """checkpoints/last.pt of a `nas search <method>` run that finished its `epochs`, holding `keys`.

    One-line RunError for a missing, unreadable or foreign checkpoint, or an unfinished search (saying
    how to resume it).
    """
    ckpt = Path(run_dir) / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        raise RunError(f"{ckpt} does not exist: give the --out directory of a finished `nas search {method}` run")
    try:
        state = torch.load(ckpt, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or foreign file: whatever torch.load raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"cannot read {ckpt}: {first}; search again with --overwrite") from None
    if not isinstance(state, dict) or not {"epoch", *keys} <= set(state):
        raise RunError(f"{ckpt} is not a {method} search checkpoint: give the --out directory of a "
                       f"`nas search {method}` run")
    if int(state["epoch"]) < epochs:
        raise RunError(f"the {method} search in {str(run_dir)!r} stopped after epoch {state['epoch']} of {epochs}: "
                       f"finish it with `nas search {method} ... --out {run_dir} --resume`")
    return state
