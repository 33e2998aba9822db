"""Process-wide tuning of glibc's allocator for the big buffers shoal moves.

A 1 MiB chunk is copied a few times on its way (wire frame, event, plaintext, payload), each
copy a fresh 1 MiB allocation. glibc serves those from ``mmap`` (or gives freed heap top back
to the kernel) by default, so every copy first takes ~256 page faults: measured here, that
was more than half of the system time of ``shoal get`` for a 256 MiB file (0.45 s of 0.9 s),
and ~0.4 CPU s in W4c's replica. Keeping allocations below 16 MiB on the heap and up to
64 MiB of freed heap mapped reuses the same pages instead; peak RSS stayed the same in W4.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Final

M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD_BYTES: Final = 16 * 1024 * 1024 + 1
"""Bigger than the largest frame (16 MiB), which still gets its own mapping."""
TRIM_THRESHOLD_BYTES: Final = 64 * 1024 * 1024


def tune() -> None:
    """Call once at process start; a no-op where the C library has no ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
