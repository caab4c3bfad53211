"""What the package is given: the files it names, opened as the Rust readers open them, and the numbers (seeds,
epochs, sizes), checked where they enter.

Only regular files are opened: a named pipe called ``clip.mp4`` would make a decoder wait forever for a writer, and
a device (``/dev/zero``) would never end. The file is opened without blocking, asked what it is, and refused
unless it is a regular file; the same descriptor is then read, so a file swapped for a pipe in between is caught
too. Errors are ``ValueError`` naming the file, so the data loaders' report-skip-replace path handles them. A seed
or an epoch that NumPy's generators cannot take is refused when it is given, not when a clip is read (where it
would be blamed on the video).
"""

from __future__ import annotations

import io
import json
import os
import stat
from typing import Any, BinaryIO

import numpy as np

#: Frames (images or video frames) larger than this many pixels are refused before they are decoded: a file of a
#: few hundred bytes may declare 20000x20000 pixels (1.2 GB as RGB). 8192x8192 leaves room for any real video.
MAX_FRAME_PIXELS = 8192 * 8192


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a file"


def regular_file_error(path: str | os.PathLike) -> str | None:
    """Why `path` (its target, for a link) cannot be read as a regular file, or None when it can."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return e.strerror or str(e)
    except ValueError as e:  # a NUL byte in the name
        return str(e)
    return None if stat.S_ISREG(mode) else f"not a regular file ({_kind(mode)})"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file; ValueError naming it otherwise (a named pipe, a
    device, a socket, a folder), OSError if it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path}: not a regular file ({_kind(mode)})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_text(path: str | os.PathLike, encoding: str = "utf-8-sig") -> str:
    """The text of a regular file (see :func:`open_regular`); UnicodeDecodeError for text that is not `encoding`."""
    with open_regular(path) as f:
        return f.read().decode(encoding)


def text_stream(path: str | os.PathLike, encoding: str = "utf-8-sig") -> io.TextIOWrapper:
    """A regular file opened as text with universal newlines off (what the csv module asks for)."""
    return io.TextIOWrapper(open_regular(path), encoding=encoding, newline="")


def load_json(text: str | bytes, what: str) -> Any:
    """``json.loads(text)``; ValueError naming `what` for text that is not JSON, including JSON nested past the
    interpreter's recursion limit (a RecursionError from the parser)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{what} is not valid JSON (nested too deeply to read)") from None


def check_pixels(width: int, height: int) -> None:
    """ValueError for a frame of more than :data:`MAX_FRAME_PIXELS` pixels (checked from the header, before
    decoding)."""
    if width * height > MAX_FRAME_PIXELS:
        raise ValueError(f"{width}x{height} frames: more than the {MAX_FRAME_PIXELS} pixels a frame may have "
                         "(MAX_FRAME_PIXELS)")


def check_int(name: str, value: Any, minimum: int) -> int:
    """`value` as an int if it is one (Python or NumPy, not bool) and at least `minimum`; ValueError naming the
    argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)
