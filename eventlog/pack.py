"""Big events' bytes in an append-only pack file beside the database.

A 1 MiB chunk event stored as a SQLite blob becomes 256 overflow pages: ~770 ``pwrite``
calls into the WAL and ~260 ``pread`` calls to checkpoint it into the database, each page
written twice. Here that was ~3 ms of CPU per MiB, in every process that stores the event
(the author, the relay, each replica), against ~0.3 ms for one write to a plain file. So an
event of ``PACK_MIN`` bytes or more keeps only its columns in ``events``; its bytes go to
``<database>.pack`` and the row says where (``pack_at``, ``pack_len``). Small events stay in
SQLite, where many small rows per transaction are what it does best.

Durability and atomicity are the database's, unchanged: bytes are appended at the end the
``pack_end`` table records, inside the transaction that inserts their rows (which holds
SQLite's write lock, so no other process appends meanwhile); the pack is flushed to the disk
before that transaction commits, and ``pack_end`` moves in it. A transaction that rolls back,
or a crash before the commit, leaves bytes past the recorded end, which the next append
simply overwrites. A committed row therefore always points at bytes on the disk, and bytes
at a committed place are never written again (events are never deleted).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Final

from eventlog.errors import StorageError

PACK_MIN: Final = 16 * 1024
"""Events this large or larger are packed: above it SQLite's per-page cost dominates."""
IOV_BATCH: Final = 512
"""Buffers per ``pwritev`` (Linux takes up to 1,024)."""


def pack_path(database: Path) -> Path:
    return database.with_suffix(".pack")


def _error(action: str, path: Path, exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"cannot {action} {path}: the disk is full ({exc.strerror})")
    return StorageError(f"cannot {action} {path}: {exc.strerror or exc}")


class Pack:
    """One database's pack file, opened on first use (most stores never hold a big event)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._fd: int | None = None
        self._unsynced = False

    def _open(self) -> int:
        if self._fd is None:
            try:
                if self.readonly:
                    self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                else:  # owner-only from birth, like the database
                    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                    self._fd = os.open(self.path, flags, 0o600)
            except OSError as exc:
                raise _error("open", self.path, exc) from exc
        return self._fd

    def write(self, at: int, raws: list[bytes]) -> None:
        """Write ``raws`` back to back from offset ``at`` (a system call per ``IOV_BATCH``)."""
        try:
            fd = self._open()
            for start in range(0, len(raws), IOV_BATCH):
                group = raws[start : start + IOV_BATCH]
                written = os.pwritev(fd, group, at)
                total = sum(map(len, group))
                if written < total:  # a short write (rare: a signal, a nearly full disk)
                    rest = memoryview(b"".join(group))[written:]
                    while rest:
                        done = os.pwrite(fd, rest, at + total - len(rest))
                        rest = rest[done:]
                at += total
        except OSError as exc:
            raise _error("write", self.path, exc) from exc
        self._unsynced = True

    def sync(self) -> None:
        """Flush what was written since the last sync (before the rows naming it commit)."""
        if not self._unsynced:
            return
        try:
            os.fdatasync(self._open())
        except OSError as exc:
            raise _error("flush", self.path, exc) from exc
        self._unsynced = False

    def read(self, at: int, length: int) -> bytes:
        try:
            data = os.pread(self._open(), length, at)
        except OSError as exc:
            raise _error("read", self.path, exc) from exc
        if len(data) != length:
            raise StorageError(
                f"{self.path} is shorter than the events stored in it (truncated or replaced)"
            )
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
