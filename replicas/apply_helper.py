"""A second process that applies what a bulk sync stores, so a big pull uses two cores.

Receiving an event is two independent halves: *storing* it (strict decode, segment
signature, chain, insert: the accept path) and *applying* it (decrypt, index, merge into its
document). On one core they run one after the other; the Python interpreter cannot overlap
them in threads (the crypto holds the GIL). Once a batch is stored, applying it needs
nothing from the connection, so during a big pull the syncing process keeps the accept path
and this helper follows the log with ``Engine.catch_up`` in a process of its own, on the
other core.

The helper only ever saves time, it never decides anything: its transactions are short
(``engine.CATCH_UP_ROWS`` events, decryption done before the lock is taken), ``catch_up``
never applies an event twice, and when the sync ends the syncing process waits for it, then
runs ``Engine.settle`` itself: whatever the helper did not reach (it died, it never started)
is applied there, and the roster's consequences (new epoch keys, revoked events) are taken
once, in the process that stored the membership events (``replicas.node.BulkPull``).

    python -m replicas.apply_helper HOME     # applies until its stdin closes, then exits
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Final

from eventlog.errors import ShoalError
from replicas import allocator
from replicas.children import spawn_tied
from replicas.home import Home
from replicas.vault import open_replica

log = logging.getLogger("shoal.apply_helper")

START_AFTER_EVENTS: Final = 4000
"""A sync applies this many events itself before it hands over to its helper (started when
the sync began, so that its ~0.3 s of start-up overlaps the sync's own); a smaller pull
never uses the helper, which is stopped unused."""
IDLE_POLL_S: Final = 0.02
"""How often an idle helper looks for newly stored events (and whether its stdin closed)."""
FINISH_TIMEOUT_S: Final = 120.0
"""How long a finished sync waits for its helper before taking over what is left."""


class ApplyHelper:
    """The syncing side's handle on one helper process (see the module docstring)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.proc is not None:
            return
        try:
            self.proc = spawn_tied("replicas.apply_helper", str(self.home), quiet=True)
        except OSError as exc:  # no helper: the sync applies everything at the end instead
            log.warning("cannot start the apply helper: %s", exc)

    def cancel(self) -> None:
        """Stop a helper that was not needed (a small pull), without waiting for it to boot.

        Safe at any point: all it ever writes is in transactions that a kill rolls back, and
        the events it did not apply are applied by whoever applies next (``Engine._apply``)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()

    def finish(self) -> None:
        """Tell the helper the sync is over and wait until it has applied what is stored."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            code = proc.wait(FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code != 0:
            log.warning("the apply helper exited with %s; the sync applies the rest", code)


def follow(home: Path) -> int:
    """The helper's loop: catch up, wait for more, until stdin closes; then catch up once more."""
    replica = open_replica(Home(home))
    try:
        engine, stdin = replica.engine, sys.stdin.fileno()
        while True:
            if engine.catch_up():
                continue
            readable, _, _ = select.select([stdin], [], [], IDLE_POLL_S)
            if readable and not os.read(stdin, 4096):
                engine.catch_up()
                return 0
    finally:
        replica.close()


def main(argv: list[str]) -> int:
    allocator.tune()
    logging.basicConfig(level=logging.WARNING, format="shoal apply helper: %(message)s")
    try:
        return follow(Path(argv[1]))
    except ShoalError as exc:  # the sync that started us applies everything itself then
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
