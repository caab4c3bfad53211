"""Atomic file writes, the one way the package replaces a file: the new contents go to a uniquely named temporary
file in the target's folder, which is synced to disk and renamed over the target only once it is complete (as
``src/io.rs`` does in Rust). A reader sees the old file
or the new one, never a half-written one; an interrupted or failed write leaves the old file and no stray temporary
file; two writers never share a temporary name. The result gets the permissions a newly created file would
(``mkstemp`` makes its files private).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write_text(d / "a.json", "{}").read_text()
'{}'
>>> sorted(p.name for p in d.iterdir())
['a.json']
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Calls ``write(tmp)`` to write the new contents to a temporary path (ending in `path`'s suffix, so that writers
    that add a suffix they miss, like ``np.savez``, keep its name) and renames it over `path`; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)  # on disk before the rename, as io.rs does: a crash leaves old or new
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`text` written to `path` atomically (UTF-8); returns `path`."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _umask() -> int:
    """The process's umask: from ``/proc`` where there is one (reading it by setting it would briefly change it for
    every thread), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask
