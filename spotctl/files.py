"""Files the commands read and write: OS errors become ToolErrors, and output paths are checked before a long run
rather than after it."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from spotctl.cli import ToolError


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ToolError(f"{path}: no such file") from None
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ToolError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_json(path: Path, *, finite: bool = True) -> Any:
    """A JSON file a user gave. Whatever makes it unreadable is one ToolError naming the file. Python's reader also
    takes NaN, Infinity and 1e400 (inf), which JSON has not: they make the file unreadable, unless `finite` is False
    for a caller that refuses them itself, naming the field (a scenario file's bad scenario is an error row)."""
    text = read_text(path)
    try:
        if not finite:
            return json.loads(text)
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError as exc:  # also an integer of more digits than Python converts
        raise ToolError(f"{path}: not JSON: {exc}") from None
    except RecursionError:
        raise ToolError(f"{path}: JSON nested too deeply to read") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Around the write of a file whose content is ready: creates its missing folders, removes them again when the
    write fails (a command that fails leaves none behind), and says which file could not be written."""
    missing = []
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield
    except BaseException as exc:
        for created in missing:  # the deepest first; one that something else has written in since stays
            with suppress(OSError):
                created.rmdir()
        if isinstance(exc, OSError):
            raise ToolError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def write_text(path: Path, text: str) -> None:
    """Writes the whole text or leaves the file as it was: a write that fails half way (a full disk) must not leave
    a truncated file where an earlier run's was, for `spotctl report` to read. The text goes to a file beside it that
    is renamed over it."""
    _write_whole(path, text)


def write_png(path: Path, figure: Any, **savefig: Any) -> None:
    """Writes a matplotlib figure as a PNG as `write_text` writes text: drawn in memory first, then written whole or
    not at all, so that a chart that fails half way (a full disk, an interrupt) leaves the earlier one."""
    drawn = io.BytesIO()
    figure.savefig(drawn, format="png", **savefig)
    _write_whole(path, drawn.getvalue())


def _written_in_place(path: Path) -> bool:
    """A device or a descriptor (/dev/stdout, a pipe) is written as it is, even when it leads to a regular file."""
    return path.exists() and (not path.is_file() or str(path.absolute()).startswith(("/dev/", "/proc/")))


def _write_whole(path: Path, content: str | bytes) -> None:
    with writing(path):
        if _written_in_place(path):
            _write(path, content)
            return
        target = path.resolve()  # through a symlink to the file it names, leaving the link
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            _write(partial, content)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)


def _write(path: Path, content: str | bytes) -> None:
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)


def check_output(
    path: Path, option: str, suffix: str | None = None, reads: Mapping[str, Path | None] | None = None
) -> None:
    """Refuses an output path that cannot be written: the wrong suffix, a directory, a folder that is a file or
    read-only, or (`reads`: the command's input files by option) a file the command reads, which it would overwrite
    with its output. Missing folders are fine: `writing` creates them when the file is written."""
    for read_option, read in (reads or {}).items():
        if read is not None and path.exists() and read.exists() and os.path.samefile(path, read):
            raise ToolError(f"{option} {path} is the file {read_option} reads: give another file to write")
    if suffix is not None and path.suffix.lower() != suffix:
        kind = suffix.lstrip(".").upper()
        raise ToolError(f"{option} writes a {kind}: give a file name ending in {suffix}, not {path.name!r}")
    if path.is_dir():
        raise ToolError(f"{option} {path} is a directory; give a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ToolError(f"{option} {path}: {folder} is not a directory")
    # A file written beside the path is renamed over it (`write_text`): its folder is what must take a new file.
    writable = folder if not path.exists() else path if _written_in_place(path) else path.resolve().parent
    if not os.access(writable, os.W_OK):
        raise ToolError(f"{option} {path}: permission denied")
