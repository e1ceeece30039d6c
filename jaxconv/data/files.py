"""Opening data files safely: regular files only, read a chunk at a time."""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

READ_CHUNK = 1 << 20  # bytes decompressed or read per step


class NotRegularFileError(ValueError):
    """A path that names a directory, FIFO or device where a regular file was expected."""


def not_regular(context: str, path: str) -> NotRegularFileError:
    return NotRegularFileError(f"{context}: {path} is not a regular file (a directory, FIFO or device); "
                               "it is not read")


def open_regular(path: str, context: str) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file.

    A FIFO or device is never opened (that could block or never end); the
    descriptor is opened non-blocking and checked again in case ``path`` was
    replaced in between.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      NotRegularFileError: ``path`` is not a regular file (a ``ValueError``).
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise not_regular(context, path)
    f = open(path, "rb", opener=lambda p, flags: os.open(p, flags | getattr(os, "O_NONBLOCK", 0)))
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise not_regular(context, path)
    return f


def read_into(f: BinaryIO, view: memoryview) -> int:
    """Reads ``f`` into ``view`` a chunk at a time until it is full or ``f`` ends; the count read."""
    got = 0
    while got < len(view):
        chunk = f.read(min(READ_CHUNK, len(view) - got))
        if not chunk:
            break
        view[got:got + len(chunk)] = chunk
        got += len(chunk)
    return got

