"""``LogPort`` over an eventlog ``Log``: what a relay (no keys, no documents) serves from.

A full replica wraps this (in ``replicas/``) so that accepted events are also applied to
documents; the protocol itself never knows the difference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from eventlog.accept import Log, Outcome
from eventlog.membership import ROLE_INVITE
from transport.messages import MAX_BATCH_EVENTS, CloseCode, ProtocolError
from transport.session import BATCH_TARGET_BYTES, BATCH_TARGET_EVENTS


class LogPortBase:
    """Serves and accepts raw events through a ``Log``; authorizes by the roster."""

    def __init__(self, log: Log, accept: Callable[[list[bytes]], Outcome] | None = None) -> None:
        self.log = log
        self._accept = accept
        self._vv: dict[bytes, tuple[int, bytes]] = {}
        self._vv_at = -1

    @property
    def vault_id(self) -> bytes:
        return self.log.vault_id

    def version_vector(self) -> Mapping[bytes, tuple[int, bytes]]:
        """Rebuilt only when a head moved: a relay's sessions read it on every ACK and push."""
        if self._vv_at != self.log.heads_version:
            self._vv = {a: (h.seq, h.id) for a, h in self.log.version_vector().items()}
            self._vv_at = self.log.heads_version
        return self._vv

    def serving_batch(
        self,
        author: bytes,
        first: int,
        last: int,
        max_events: int = BATCH_TARGET_EVENTS,
        max_bytes: int = BATCH_TARGET_BYTES,
        run_on: bool = True,
    ) -> list[bytes]:
        raws = self.log.store.serving_batch(author, first, last, max_events, max_bytes, run_on)
        return raws[:MAX_BATCH_EVENTS]

    def accept_batch(self, raws: list[bytes]) -> Outcome:
        if self._accept is not None:
            return self._accept(raws)
        return self.log.accept_batch(raws)

    def event_at(self, author: bytes, seq: int) -> bytes | None:
        row = self.log.store.event_at(author, seq)
        return None if row is None else row.raw

    def refuses(self, author: bytes, seq: int) -> bool:
        return author in self.log.frozen or (
            author in self.log.fold.members and self.log.revoked(author, seq)
        )

    def may_connect(self, peer: bytes, role: str, initiator: bool) -> bool:
        return member_may_connect(self.log, peer)


def member_may_connect(log: Log, peer: bytes, now_ms: int | None = None) -> bool:
    """A member may sync; an invite key only while unused and unexpired.

    A removed key is told so with its own close code (``REMOVED``), not a generic refusal.
    """
    log.refresh()
    member = log.roster.get(peer)
    if member is None:
        if peer in log.removed:
            raise ProtocolError(CloseCode.REMOVED, "this device was removed from the vault")
        return False
    if member.role == ROLE_INVITE:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return log.head(peer) is None and now <= member.expires_ms
    return True
