"""The `nas` command. Each subcommand lives in `nas_common.commands.<name>` and registers itself.

Exit codes (also in `nas --help`):

    0    done
    1    crashed: a bug (the traceback is printed; please report it)
    2    refused: the input is wrong (one line on stderr says what and how to fix it; nothing is written)
    3    finished, but the result is over its budget (`nas search`)
    130  interrupted (Ctrl-C); a run continues with --resume

Errors a user can fix (`NASError`) print one line and exit 2. With `--json`, stdout holds exactly one
JSON object (anything else a command or a method prints goes to stderr); non-finite numbers are null.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from .errors import NASError
from .registry import Registry

EXIT_OK, EXIT_CRASHED, EXIT_REFUSED, EXIT_OVER_BUDGET, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES = {EXIT_OK: "done", EXIT_CRASHED: "crashed (a bug: the traceback is printed; please report it)",
              EXIT_REFUSED: "refused input (one line on stderr says what is wrong; nothing was written)",
              EXIT_OVER_BUDGET: "finished, but the result is over its budget",
              EXIT_INTERRUPTED: "interrupted (continue a run with --resume)"}
_JSON_OUT: list[TextIO] = []  # the real stdout while a --json command runs with stdout sent to stderr

# name -> (add_arguments(parser), run(args) -> int | None, help)
COMMANDS: Registry[tuple[Callable, Callable, str]] = Registry("command")
_MODULES = ("list", "cost", "search", "train", "eval", "export")


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line (`nas train: error: argument --seed: ...`), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {' '.join(message.split())} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(EXIT_REFUSED)


def command(name: str, help: str, arguments: Callable | None = None) -> Callable:
    """Register `run(args)` as subcommand `name`; `arguments(parser)` adds its options (see commands/)."""

    def deco(run: Callable) -> Callable:
        COMMANDS.register(name, (arguments or (lambda p: None), run, help))
        return run

    return deco


def add_common_run_args(p: argparse.ArgumentParser, dataset_help: str | None = None) -> None:
    """Options shared by commands that read data and use a device (`dataset_help`: the --dataset
    option's default is then None, which the command resolves itself)."""
    p.add_argument("--dataset", default=None if dataset_help else "cifar10-mini",
                   help=dataset_help or "dataset name (see `nas list`) or npz:PATH (default: cifar10-mini)")
    p.add_argument("--data-dir", default=None,
                   help="where torchvision datasets live (cifar10, cifar100, svhn, imagefolder)")
    p.add_argument("--download", action="store_true", help="download a torchvision dataset into --data-dir if missing")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    p.add_argument("--seed", type=seed_arg, default=0, help="random seed, an integer in [0, 2**31) (default 0)")


def add_keep_best_arg(p: argparse.ArgumentParser, metric: str) -> None:
    p.add_argument("--keep-best", type=int, default=1, metavar="K",
                   help=f"keep checkpoints/best.pt (the best epoch by {metric}) beside last.pt, and with K > 1 the "
                        f"K best epochs as checkpoints/epoch-NNNN.pt; 0: none (default 1)")


def seed_arg(text: str) -> int:
    """argparse type of --seed: an integer in [0, 2**31) (what NumPy, torch and Python all accept)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**31), got {text!r}") from None
    if not 0 <= v < 2**31:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**31), got {v}")
    return v


def jsonable(obj: Any) -> Any:
    """`obj` with what JSON cannot hold made valid: NaN/inf -> None, tensors/arrays -> lists, paths -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars
        return jsonable(obj.tolist())
    return str(obj)


def emit_json(obj: Any) -> None:
    """Print `obj` as the one JSON object of a `--json` command (valid JSON: no NaN)."""
    out = _JSON_OUT[-1] if _JSON_OUT else sys.stdout
    print(json.dumps(jsonable(obj), allow_nan=False), file=out, flush=True)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser of `nas`; a command whose `arguments(p, argv)` takes the command line too can add
    options that depend on it (`nas search METHOD` adds the method's own flags)."""
    import inspect

    from . import __version__

    epilog = "exit codes:\n" + "\n".join(f"  {k:<4d} {v}" for k, v in EXIT_CODES.items()) + (
        "\n\nenvironment:\n  NAS_PROGRESS=1|0  always / never draw progress bars (default: when stderr is a "
        "terminal;\n                    without bars every epoch logs one line)")
    parser = _Parser(prog="nas", description="NAS and structured pruning under a cost budget",
                                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"nas-common {__version__}")
    _verbosity_args(parser, 0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _MODULES:
        try:
            importlib.import_module(f"nas_common.commands.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"nas_common.commands.{mod}":
                raise
    for name, (add_args, run, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _verbosity_args(p, argparse.SUPPRESS)
        if len(inspect.signature(add_args).parameters) > 1:
            add_args(p, list(argv))
        else:
            add_args(p)
        p.set_defaults(_run=run)
    return parser


def _verbosity_args(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("-q", "--quiet", action="count", default=default,
                   help="log only warnings and errors (no per-epoch lines)")
    p.add_argument("-v", "--verbose", action="count", default=default, help="log debugging detail too")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    try:
        import torch

        if isinstance(e, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    msg = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in msg or "out of memory" in msg.lower())


def main(argv: Sequence[str] | None = None) -> int:
    """Run `nas ARGV`; returns the exit code (see EXIT_CODES)."""
    from .log import setup_cli_logging, teardown_cli_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
    except NASError as e:  # e.g. a method named on the command line whose package cannot load
        print(f"nas: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_REFUSED
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return EXIT_REFUSED
    setup_cli_logging(int(getattr(args, "verbose", 0) or 0) - int(getattr(args, "quiet", 0) or 0))
    json_mode = bool(getattr(args, "json", False))
    try:
        with contextlib.ExitStack() as stack:
            if json_mode:  # stdout holds only the JSON object: whatever else is printed goes to stderr
                _JSON_OUT.append(sys.stdout)
                stack.callback(_JSON_OUT.pop)
                stack.enter_context(contextlib.redirect_stdout(sys.stderr))
            code = args._run(args)
    except NASError as e:
        print(f"nas {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print(f"nas {args.command}: interrupted (continue with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if _is_oom(e):  # a network or batch too large for this machine: say so, no traceback
            print(f"nas {args.command}: error: out of memory ({_one_line(e)[:200]}): use a smaller network, "
                  f"batch size or input", file=sys.stderr)
            return EXIT_REFUSED
        raise
    finally:
        teardown_cli_logging()
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    # `python -m nas_common.cli` (e.g. under torchrun): run the imported module's main, so subcommands
    # register into the same COMMANDS registry that it reads (not into this __main__ copy's).
    from nas_common.cli import main as _main

    sys.exit(_main())
