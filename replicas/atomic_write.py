"""Writing one file into a folder the way a mirror must: never half a file, never through a
link, with the permissions asked for, and started towards the disk while it is written.

The bytes go to a temporary file next to the target (created exclusively, without following
a link planted at its name, private until its mode is set) and an atomic rename puts it in
place, so a reader sees the old file or the new one. Durability is the caller's: a mirror
syncs a batch of files once, before its database says they are written.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Final

TEMP_PREFIX: Final = ".shoal-tmp-"
WRITEBACK_MIN: Final = 256 * 1024
"""Every this many bytes start their writeback as they are written (see ``_start_writeback``)."""
WRITEBACK_FILE_MIN: Final = 64 * 1024
"""A file this big also starts the writeback of its rest when it is done. A smaller one is
left to the batch's sync: the call costs ~50 us whatever the size (~0.5 s of W4b's 10,000
files of 4 KiB), while W4a's 64 KiB files gained from it."""
_TEMP_STEM: Final = f"{os.getpid()}-{secrets.token_hex(4)}-"
"""Temporary names: this process's stem and a serial (``O_EXCL`` refuses any clash)."""
_temp_serial = itertools.count()


def write_file(
    target: Path, blocks: Iterable[bytes], *, mode: int | None, mtime_ns: int | None
) -> None:
    """``blocks`` as the new content of ``target``, through a temporary file and a rename.

    ``mode``: the permission bits to give it (a replaced file's, say), or None for the
    defaults; ``mtime_ns``: its modification time, or None for now. The directory is made
    only when the file cannot be created without it, and the temporary file is removed
    only if it was not renamed: two system calls per file that were a twentieth of a mirror
    of small files."""
    temp = target.parent / f"{TEMP_PREFIX}{_TEMP_STEM}{next(_temp_serial)}"
    try:
        fd = _create(temp, mode)
    except FileExistsError:  # a leftover of a crashed process that had our pid
        temp = target.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        fd = _create(temp, mode)
    try:
        try:
            done = started = 0
            for block in blocks:
                _write_all(fd, block)
                done += len(block)
                if done - started >= WRITEBACK_MIN:
                    _start_writeback(fd, started, done - started)
                    started = done
            if done > started and done >= WRITEBACK_FILE_MIN:
                _start_writeback(fd, started, done - started)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """All of ``data`` to a raw descriptor (a file object per file cost a ``BufferedWriter``
    and an ``isatty`` and an ``lseek`` call, for one write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing these bytes to the disk now, while the next are
    decrypted, rather than all at the batch's sync (W4c: ~0.3 s of 256 MiB at the end; a
    batch of small files waited for all of theirs at once). On Linux,
    ``POSIX_FADV_DONTNEED`` starts writeback of dirty pages (and drops only pages already
    clean); elsewhere this does nothing."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _create(path: Path, mode: int | None = None) -> int:
    """A new file open for writing (never an existing one, nor through a link planted at
    its name), as a raw descriptor; its directory is made only if it is missing. ``mode``:
    its permissions, exactly (set while it is still empty and private); otherwise the
    default ones."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o666 if mode is None else 0o600)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666 if mode is None else 0o600)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd
