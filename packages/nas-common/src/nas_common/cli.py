"""The `nas` command. Each subcommand lives in `nas_common.commands.<name>` and registers itself.

Errors a user can fix (`NASError`) print one line and exit 2; nothing is half-written.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from .errors import NASError
from .registry import Registry

# name -> (add_arguments(parser), run(args) -> int | None, help)
COMMANDS: Registry[tuple[Callable, Callable, str]] = Registry("command")
_MODULES = ("list", "cost", "search", "train", "eval", "export")


def command(name: str, help: str, arguments: Callable | None = None) -> Callable:
    """Register `run(args)` as subcommand `name`; `arguments(parser)` adds its options (see commands/)."""

    def deco(run: Callable) -> Callable:
        COMMANDS.register(name, (arguments or (lambda p: None), run, help))
        return run

    return deco


def add_common_run_args(p: argparse.ArgumentParser) -> None:
    """Options shared by commands that read data and use a device."""
    p.add_argument("--dataset", default="cifar10-mini",
                   help="dataset name (see `nas list`) or npz:PATH (default: cifar10-mini)")
    p.add_argument("--data-dir", default=None,
                   help="where torchvision datasets live (cifar10, cifar100, svhn, imagefolder)")
    p.add_argument("--download", action="store_true", help="download a torchvision dataset into --data-dir if missing")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    p.add_argument("--seed", type=int, default=0)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser of `nas`; a command whose `arguments(p, argv)` takes the command line too can add
    options that depend on it (`nas search METHOD` adds the method's own flags)."""
    import inspect

    from . import __version__

    parser = argparse.ArgumentParser(prog="nas", description="NAS and structured pruning under a cost budget")
    parser.add_argument("--version", action="version", version=f"nas-common {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _MODULES:
        try:
            importlib.import_module(f"nas_common.commands.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"nas_common.commands.{mod}":
                raise
    for name, (add_args, run, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if len(inspect.signature(add_args).parameters) > 1:
            add_args(p, list(argv))
        else:
            add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
    except NASError as e:  # e.g. a method named on the command line whose package cannot load
        print(f"nas: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        code = args._run(args)
    except NASError as e:
        print(f"nas {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nas {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    # `python -m nas_common.cli` (e.g. under torchrun): run the imported module's main, so subcommands
    # register into the same COMMANDS registry that it reads (not into this __main__ copy's).
    from nas_common.cli import main as _main

    sys.exit(_main())
