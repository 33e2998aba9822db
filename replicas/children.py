"""Helper processes of a shoal command, tied to it by their stdin.

The apply helper of a bulk sync and the folder worker of a daemon are ``python -m`` children
on the same home. Each is given a pipe as stdin and treats its end of file as "the parent is
done or gone" — which also holds after a ``kill -9`` of the parent, so no child outlives it.
"""

from __future__ import annotations

import os
import subprocess
import sys


def spawn_tied(
    module: str, *args: str, quiet: bool = False, talks: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``python -m module args...`` with a pipe from us as its stdin (one thread for
    numeric runtimes, as every shoal process runs). ``quiet`` discards its stdout;
    ``talks`` makes it a pipe to us."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE if talks else subprocess.DEVNULL if quiet else None,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
