"""A full disk for the tests of spotctl's outputs: files written from then on stop at 4 KiB and then fail, as a full
disk stops them. (A file-size limit on the process would do it too, but also stop pytest's own output when that goes
to a file.)"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

LIMIT = 4096


def _no_space(path: Any) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def full_disk_after_4_kib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text and binary files, and the charts matplotlib writes to a path itself, stop at 4 KiB and then fail."""
    write_text, write_bytes, savefig = Path.write_text, Path.write_bytes, Figure.savefig

    def text_on_full_disk(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        write_text(self, data[:LIMIT], *args, **kwargs)
        if len(data) > LIMIT:
            raise _no_space(self)
        return len(data)

    def bytes_on_full_disk(self: Path, data: bytes) -> int:
        write_bytes(self, data[:LIMIT])
        if len(data) > LIMIT:
            raise _no_space(self)
        return len(data)

    def savefig_on_full_disk(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(fname, str | os.PathLike):
            savefig(self, fname, *args, **kwargs)  # into memory or an open file: the file's writer decides
            return
        rendered = io.BytesIO()
        kwargs.setdefault("format", Path(fname).suffix.lstrip(".") or "png")
        savefig(self, rendered, *args, **kwargs)
        bytes_on_full_disk(Path(fname), rendered.getvalue())

    monkeypatch.setattr(Path, "write_text", text_on_full_disk)
    monkeypatch.setattr(Path, "write_bytes", bytes_on_full_disk)
    monkeypatch.setattr(Figure, "savefig", savefig_on_full_disk)
