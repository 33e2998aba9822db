"""Watched and mirrored folders in a process of their own, beside ``shoal serve``.

A folder's work is per file and per byte — stat, read, chunk, hash, seal, sign and index on
the way in; decrypt, write and rename on the way out — and it used to share the daemon's one
event loop (and so one core) with sync: while a big folder was ingested or mirrored, pushes
and acknowledgements waited, and a 10,000-file mirror kept its daemon busy for seconds after
the last event had arrived. ``serve --watch/--mirror`` now starts this worker, which runs the
same folder loop (``replicas.watching.run_folders``) on the same home: the two processes meet
only in the database, where the daemon notices the worker's commits within ``POLL_S`` and
pushes them, and the worker notices the events the daemon applied (``run_folders`` polls
for other processes' commits too).

The worker ends when the daemon asks (SIGTERM) or disappears (its stdin, a pipe from the
daemon, reaches end of file), so a ``kill -9`` of the daemon leaves no orphan writing to
the folder. The daemon restarts a worker that died, with backoff. A byte on that pipe is a
wake-up: the daemon sends one whenever its engine stored or applied events, so a mirror
writes what arrived at once instead of at its next poll. The other way, the worker writes a
byte to its stdout (a pipe to the daemon) after each commit, so the daemon pushes what was
ingested at once instead of at its next ``POLL_S`` look (~0.1 s at the end of each burst).

    python -m replicas.folder_worker HOME [--watch DIR]... [--mirror DIR]...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from replicas import allocator
from replicas.children import spawn_tied

if TYPE_CHECKING:
    from engine.engine import Engine

log = logging.getLogger("shoal.folders")

RESTART_MIN_S: Final = 1.0
RESTART_MAX_S: Final = 60.0
STOP_TIMEOUT_S: Final = 15.0


class FolderWorker:
    """The daemon's handle on its folder worker: start, supervise, stop."""

    def __init__(self, home: Path, watch: list[Path], mirror: list[Path], verbose: bool) -> None:
        self.args = [str(home)]
        self.args += [arg for path in watch for arg in ("--watch", str(path))]
        self.args += [arg for path in mirror for arg in ("--mirror", str(path))]
        if verbose:
            self.args.append("--verbose")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        self.proc = spawn_tied("replicas.folder_worker", *self.args, talks=True)
        if self.proc.stdin is not None:  # wake-ups are never worth blocking for (``_wake``)
            os.set_blocking(self.proc.stdin.fileno(), False)
        return self.proc

    async def supervise(
        self,
        stop: asyncio.Event,
        engine: Engine | None = None,
        committed: Callable[[], None] | None = None,
    ) -> None:
        """Restart the worker whenever it dies before ``stop`` (1 s, 2 s ... 60 s apart;
        back to 1 s after a worker that ran for a minute). ``engine``: the daemon's, whose
        stored and applied events wake the worker; ``committed``: called when the worker
        says it committed (see the module docstring)."""
        arrived = asyncio.Event()
        if engine is not None:
            engine.add_wakeup(arrived)
        try:
            await self._restart_until(stop, arrived, committed)
        finally:
            if engine is not None:
                engine.remove_wakeup(arrived)

    async def _restart_until(
        self, stop: asyncio.Event, arrived: asyncio.Event, committed: Callable[[], None] | None
    ) -> None:
        pause = RESTART_MIN_S
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = time.monotonic()
            try:
                proc = self.start()
            except OSError as exc:
                log.error("cannot start the folder worker: %s", exc)
                proc = None
            told = proc.stdout.fileno() if proc is not None and proc.stdout else None
            if told is not None:
                loop.add_reader(told, _heard, told, committed)
            try:
                while proc is not None and proc.poll() is None and not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(arrived.wait(), 0.2)
                    if arrived.is_set():
                        arrived.clear()
                        _wake(proc)
            finally:
                if told is not None:
                    loop.remove_reader(told)
                if proc is not None and proc.poll() is not None and proc.stdout is not None:
                    proc.stdout.close()  # a worker that is still running: ``stop`` closes it
            with contextlib.suppress(TimeoutError):  # Ctrl-C reaches us both: no restart
                await asyncio.wait_for(stop.wait(), 0.5)
            if stop.is_set():
                return
            code = None if proc is None else proc.returncode
            log.warning("folder worker exited with %s; restarting in %.0f s", code, pause)
            if time.monotonic() - started > RESTART_MAX_S:
                pause = RESTART_MIN_S
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_MAX_S)

    def stop(self) -> None:
        """SIGTERM (the worker finishes the batch it is in), then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def _heard(fd: int, committed: Callable[[], None] | None) -> None:
    """Bytes from the worker: it committed. End of file: it is gone (the supervisor sees
    that by itself), and the pipe is no longer watched, or it would read as ready forever."""
    try:
        heard = os.read(fd, 4096)
    except OSError:
        heard = b""
    if not heard:
        asyncio.get_running_loop().remove_reader(fd)
    elif committed is not None:
        committed()


def _tell_daemon() -> None:
    """One byte on stdout after a commit; none if the pipe is full (one is pending)."""
    with contextlib.suppress(OSError):  # full, or the daemon is gone
        os.write(sys.stdout.fileno(), b"\x01")


def _wake(proc: subprocess.Popen[bytes]) -> None:
    """One wake-up byte to the worker; none if its pipe is full (it has one to read)."""
    if proc.stdin is None:
        return
    # Full: a wake-up is pending already; broken or closed: the worker is gone.
    with contextlib.suppress(BlockingIOError, BrokenPipeError, ValueError):
        os.write(proc.stdin.fileno(), b"\x01")


async def follow(home: Path, watch: list[Path], mirror: list[Path]) -> None:
    from replicas.home import Home
    from replicas.vault import opened
    from replicas.watching import open_folders, run_folders

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    with opened(Home(home)) as replica:

        def from_daemon() -> None:  # bytes: wake-ups; end of file: the daemon is gone
            if os.read(sys.stdin.fileno(), 4096):
                replica.engine.notify()
            else:
                loop.remove_reader(sys.stdin.fileno())
                stop.set()

        loop.add_reader(sys.stdin.fileno(), from_daemon)
        if stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode):  # a pipe to the daemon
            os.set_blocking(sys.stdout.fileno(), False)
            replica.store.commit_hooks.append(_tell_daemon)
        folders = open_folders(replica, watch, mirror, report)
        await run_folders(replica, folders, stop)


def report(line: str) -> None:
    print(f"shoal: {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from eventlog.errors import ShoalError

    p = argparse.ArgumentParser(prog="python -m replicas.folder_worker")
    p.add_argument("home", type=Path)
    p.add_argument("--watch", type=Path, action="append", default=[])
    p.add_argument("--mirror", type=Path, action="append", default=[])
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    allocator.tune()
    logging.basicConfig(  # as the daemon's own log lines
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        asyncio.run(follow(args.home, args.watch, args.mirror))
    except ShoalError as exc:
        report(f"error: folders: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
