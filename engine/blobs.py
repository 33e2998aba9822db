"""File content as chunks: cut by content, addressed by a keyed hash, streamed.

Chunks are cut with FastCDC (content-defined, so an insertion in the middle of a file moves
only the chunks around it and the rest deduplicate, as in restic), 256 KiB to 4 MiB, about
1 MiB on average: one chunk always fits in one event (``MAX_EVENT_BYTES`` is 8 MiB).

A chunk's id is BLAKE2b-256 keyed with a vault purpose key, not a plain hash: whoever lacks
the vault key cannot compute the id of a file they know, so even an id that leaked could not
confirm that a known file is in the vault. Ids travel only inside sealed bodies anyway; the
relay sees neither ids nor content. The key comes from the vault's *first* epoch so ids stay
stable across key rotations and deduplication keeps working after a device is removed.

Reading and writing never hold more than one chunk (plus the reader's buffer) in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import BinaryIO, Final

from eventlog.crypto import derive_key
from eventlog.errors import MissingKeyError
from eventlog.sealing import Keyring

CHUNK_MIN: Final = 256 * 1024
CHUNK_AVG: Final = 1024 * 1024
CHUNK_MAX: Final = 4 * 1024 * 1024
ID_BYTES: Final = 32

PURPOSE_CHUNK_ID: Final = b"shoal-v1 chunk id"
PURPOSE_CONTENT: Final = b"shoal-v1 content hash"


class BlobKeys:
    """The keyed hashes of one vault: chunk ids and whole-file content hashes."""

    def __init__(self, keyring: Keyring) -> None:
        epochs = keyring.epochs()
        if not epochs:
            raise MissingKeyError("no vault key: this replica cannot address blobs")
        root = epochs[min(epochs)]
        self._chunk_key = derive_key(root, PURPOSE_CHUNK_ID)
        self._content_key = derive_key(root, PURPOSE_CONTENT)

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return hashlib.blake2b(data, key=self._chunk_key, digest_size=ID_BYTES).digest()

    def content_hasher(self) -> hashlib.blake2b:
        """A running keyed hash of a whole file's bytes (its version identity)."""
        return hashlib.blake2b(key=self._content_key, digest_size=ID_BYTES)

    def content_hash(self, data: bytes) -> bytes:
        hasher = self.content_hasher()
        hasher.update(data)
        return hasher.digest()


def cut(stream: BinaryIO) -> Iterator[bytes]:
    """The chunks of a stream, in order; memory stays bounded by ``CHUNK_MAX``.

    A stream no longer than ``CHUNK_MIN`` is one chunk whatever the chunker would say, so
    small files skip setting one up (most of the cost of ingesting a 4 KiB file).
    """
    head = stream.read(CHUNK_MIN + 1)
    if len(head) <= CHUNK_MIN:
        if head:
            yield head
        return
    from pyfastcdc import FastCDC

    chunker = FastCDC(avg_size=CHUNK_AVG, min_size=CHUNK_MIN, max_size=CHUNK_MAX)
    for chunk in chunker.cut_stream(_Rejoined(head, stream)):
        yield bytes(chunk.data)  # the library reuses its buffer: copy before the next cut


class _Rejoined:
    """A stream whose first bytes were already read: serves them again, then the rest."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readinto(self, buffer: memoryview | bytearray) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        return self._rest.readinto(buffer)  # type: ignore[attr-defined,no-any-return]

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                data = bytes(self._head) + self._rest.read()
                self._head = memoryview(b"")
                return data
            data = bytes(self._head[:size])
            self._head = self._head[size:]
            return data
        return self._rest.read(size)
