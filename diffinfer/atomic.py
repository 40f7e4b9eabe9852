"""Atomic file writes: a temporary file beside the target, flushed and ``fsync``-ed, then
renamed over it (``os.replace``), so a reader (or a process killed mid-write) only ever
sees the old file or the complete new one. A failed write removes its temporary file.

- ``atomic_path(path)``: a context manager yielding a temporary path to write to;
- ``write_text(path, text)`` / ``write_bytes(path, data)``: one-call writers;
- ``remove_stale_temporaries(path)``: temporaries of ``path`` left by a killed process.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile

TMP_SUFFIX = ".partial"


def _tmp_prefix(path: pathlib.Path) -> str:
    return f".{path.name}."


def _fsync_dir(directory: pathlib.Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644):
    """Yield a temporary path in ``path``'s directory; on a clean exit it is fsync-ed and
    renamed to ``path`` (permissions ``mode``), on an exception it is removed."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a file")
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return pathlib.Path(path)


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    return write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(path: str | os.PathLike) -> list[pathlib.Path]:
    """Delete the temporaries ``atomic_path(path)`` leaves when its process is killed."""
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        return []
    stale = [p for p in path.parent.glob(_tmp_prefix(path) + "*" + TMP_SUFFIX)]
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink()
    return stale
