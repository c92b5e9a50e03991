"""Every write of a run directory, an architecture file or an export goes through here: atomically.

Each writer fills a temporary file in the destination's folder, flushes it to disk and `os.replace`s
it onto the destination, so a reader (or a resume after a kill) sees either the old file or the new
one, never a partial one. Files get the mode an ordinary `open` would give (0666 minus the umask):
`tempfile.mkstemp` alone would leave them 0600.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["append_line", "atomic_link", "atomic_path", "atomic_save", "atomic_write_json", "atomic_write_text",
           "check_file", "check_writable_file", "file_mode", "read_text"]


def check_file(path: str | Path, what: str, expected: str, error: type[Exception] = ValueError) -> Path:
    """`path` as an existing regular file, or `error` saying which of "does not exist", "is a
    directory" or "is not a regular file" holds (`what`: "npz file"; `expected`: "a .npz file")."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise error(f"{what} {str(p)!r} is a directory: {expected} was expected")
    if not p.exists():
        raise error(f"{what} {str(p)!r} does not exist: give the path of {expected}")
    if not p.is_file():
        raise error(f"{what} {str(p)!r} is not a regular file: give the path of {expected}")
    return p


def read_text(path: str | Path, what: str, expected: str, error: type[Exception] = ValueError) -> str:
    """The UTF-8 text of `path` (see `check_file`); a binary or non-UTF-8 file is `error` too."""
    p = check_file(path, what, expected, error)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {str(p)!r} is not UTF-8 text: {expected} was expected") from None
    except OSError as e:
        raise error(f"cannot read {what} {str(p)!r}: {e.strerror or e}") from None


def check_writable_file(path: str | Path, what: str, error: type[Exception] = ValueError) -> Path:
    """`path` as a file that can be written: not empty, not a directory, no regular file among its
    parents (checked before anything is written)."""
    if str(path).strip() == "":
        raise error(f"{what} is empty: name the file to write")
    p = Path(path).expanduser()
    if p.is_dir():
        raise error(f"{what} {str(p)!r} is a directory: give a file name inside it")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise error(f"{what} {str(p)!r} cannot be written: {str(parent)!r} is a file, not a directory")
            break
    return p


def file_mode() -> int:
    """The mode `open(path, "w")` gives a new file under the current umask (e.g. 0644 under 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`; on a clean exit it replaces `path` (else it is removed).

    For writers that take a file name rather than a stream (torch.onnx.export, torch.export.save)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        _fsync_file(tmp)
        os.replace(tmp, p)
        _fsync_dir(p.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _write(path: str | Path, fill: Callable[[IO[bytes]], None]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fill(f)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return _write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write `obj` as JSON (one trailing newline) to `path` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save(obj)` to `path` atomically (checkpoints, model.pt)."""
    import torch

    return _write(path, lambda f: torch.save(obj, f))


def atomic_link(src: str | Path, dst: str | Path) -> Path:
    """Make `dst` hold the current content of `src` (best.pt from last.pt) atomically: a hard link
    (no copy; `src` is later replaced by a new file, the link keeps the old content), or a copy where
    the filesystem has no hard links."""
    import shutil

    d = Path(dst)
    with atomic_path(d) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return d


def append_line(path: str | Path, line: str) -> None:
    """Append one line (a metrics.jsonl record) and flush it: a kill loses at most that line, which
    readers skip when it is incomplete."""
    text = line.rstrip("\n") + "\n"
    try:
        with open(path, "rb") as f:  # a line cut short by a kill stays a line of its own (readers skip it)
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                text = "\n" + text
    except (FileNotFoundError, OSError):  # no file yet, or an empty one
        pass
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()


def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
