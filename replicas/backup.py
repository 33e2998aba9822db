"""``shoal backup``: what the relay holds of each log, proven from signed events.

The relay's HAVE claims a head per author. We ask it (PROBE) for the event at each claimed
head and at a few random earlier places, and check each answer: it must decode and have the
same id (the hash of the author's signed bytes) as our own event at that place, or, where
we hold none, carry the author's valid signature. A relay cannot forge either, and because
every event names its predecessor's hash, a correct head commits the relay to the whole chain
below it; the random samples check that it still serves that chain rather than only the head.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from engine import views
from eventlog.crypto import signature_ok
from eventlog.envelope import decode_event
from eventlog.errors import DecodeError
from replicas.node import sync_once
from replicas.vault import Replica
from transport.session import Session

SAMPLES_PER_AUTHOR: Final = 3


@dataclass
class AuthorBackup:
    author: bytes
    name: str
    local_seq: int
    relay_seq: int
    proven: int
    failed: list[str]

    @property
    def status(self) -> str:
        if self.failed:
            return "PROOF FAILED"
        if self.relay_seq < self.local_seq:
            return f"missing {self.local_seq - self.relay_seq}"
        return "complete"


async def backup_report(replica: Replica, url: str) -> list[AuthorBackup]:
    local = {a: h.seq for a, h in replica.store.version_vector().items()}
    asked: list[tuple[bytes, int]] = []

    def choose(session: Session) -> list[tuple[bytes, int]]:
        for author, seq in sorted(local.items()):
            held = min(seq, session.peer_have.get(author, (0, b""))[0])
            if held:
                places = {held, *random.sample(range(1, held + 1), min(held, SAMPLES_PER_AUTHOR))}
                asked.extend((author, s) for s in sorted(places))
        return asked[:64]

    result = await sync_once(replica, url, audit=True, probes=choose)
    names = views.replica_names(replica.store)
    rows = {
        a: AuthorBackup(a, names.get(a, ""), seq, result.peer_have.get(a, (0, b""))[0], 0, [])
        for a, seq in local.items()
    }
    for (author, seq), raw in zip(asked, result.proofs, strict=False):
        row, ours = rows[author], replica.store.event_at(author, seq)
        try:
            event = decode_event(raw)
        except DecodeError:
            row.failed.append(f"seq {seq}: relay sent no valid event")
            continue
        if (event.author, event.seq) != (author, seq):
            row.failed.append(f"seq {seq}: relay answered with another place")
        elif ours is not None and ours.id != event.id:
            row.failed.append(f"seq {seq}: relay's event differs from ours")
        elif ours is None and not signature_ok(event.author, event.sig, event.message):
            row.failed.append(f"seq {seq}: signature does not verify")
        else:
            row.proven += 1  # same id as our event: the relay holds the authentic bytes
    return sorted(rows.values(), key=lambda r: r.author)
