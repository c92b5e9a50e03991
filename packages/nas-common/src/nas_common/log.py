"""Logging and progress: what a run says while it works.

The library logs through `logging.getLogger("nas_common")` (and children such as `nas_common.run`),
which has only a `NullHandler`: a program that imports nas_common decides what is shown, as with any
well-behaved library. The `nas` command installs one handler on stderr (`setup_cli_logging`): INFO by
default, WARNING with `-q`, DEBUG with `-v`.

Progress bars (tqdm.auto: a terminal bar, or a widget in Jupyter) are shown on rank 0 when stderr is
a terminal. The environment variable `NAS_PROGRESS` overrides that: `NAS_PROGRESS=1` always shows
bars, `NAS_PROGRESS=0` never does. When bars are off (a CI job, a cluster log, a pipe) every epoch
still logs one line (`Run.log` does it for every method), so a long search is never silent.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, TextIO

__all__ = ["PROGRESS_ENV", "get_logger", "logger", "progress_enabled", "setup_cli_logging"]

PROGRESS_ENV = "NAS_PROGRESS"

logger = logging.getLogger("nas_common")
logger.addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """The child logger `nas_common.<name>` (so one handler on "nas_common" sees every part)."""
    return logging.getLogger(f"nas_common.{name}")


def progress_enabled(requested: bool = True, stream: TextIO | None = None) -> bool:
    """Whether a progress bar should be drawn: `requested`, then NAS_PROGRESS (1: always, 0: never),
    else only when `stream` (stderr) is a terminal."""
    if not requested:
        return False
    env = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or foreign stream
        return False


class _TqdmHandler(logging.StreamHandler):
    """Writes each record on its own line through tqdm.write, so log lines do not break a bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"nas: {record.levelname.lower()}: {msg}"
        return msg


_CLI_HANDLER: logging.Handler | None = None


def setup_cli_logging(verbosity: int = 0, stream: TextIO | None = None) -> logging.Handler:
    """One handler on stderr for the `nas` command: -1 (quiet) WARNING, 0 INFO, 1+ (verbose) DEBUG.

    Python warnings (`warnings.warn`) are shown through it as one line each (`nas: warning: ...`)."""
    global _CLI_HANDLER
    if _CLI_HANDLER is not None:
        logger.removeHandler(_CLI_HANDLER)
    handler = _TqdmHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    logger.propagate = False
    _CLI_HANDLER = handler

    def showwarning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                    line: Any = None) -> None:
        text = str(message).strip().splitlines()
        logger.warning(text[0] if text else category.__name__)

    warnings.showwarning = showwarning
    return handler


def teardown_cli_logging() -> None:
    """Remove the `nas` command's handler (tests call main() many times in one process)."""
    global _CLI_HANDLER
    if _CLI_HANDLER is not None:
        logger.removeHandler(_CLI_HANDLER)
        _CLI_HANDLER = None
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
    warnings.showwarning = _ORIGINAL_SHOWWARNING


_ORIGINAL_SHOWWARNING = warnings.showwarning
