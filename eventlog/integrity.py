"""The integrity walker: re-read every stored event and say which ones cannot be believed.

Like restic's ``check``: it trusts nothing derived, only the raw bytes. For every event it
re-decodes, recomputes the id, checks the vault, the chain (``prev``, ``seq``, ``lamport``)
and, given a keyring, that the body opens. Signatures: every *anchor* (see
``Log.accept_batch``) must carry a valid one, since we serve batches ending there; an event
between anchors is authentic when a later valid signature vouches for it through the hash
chain, exactly as when it was accepted. Pending events and equivocations are
reported too: a vault with either is not whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from eventlog.crypto import signature_ok
from eventlog.envelope import ZERO32, Kind, decode_event
from eventlog.errors import DecodeError, IntegrityError
from eventlog.sealing import Keyring
from eventlog.store import Store, StoredEvent


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong: the event (if any) named by id, and why."""

    kind: str
    reason: str
    event_id: bytes | None = None
    author: bytes | None = None
    seq: int | None = None


@dataclass(slots=True)
class Report:
    events: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _event_problems(
    row: StoredEvent, vault_id: bytes, prev: StoredEvent | None, keyring: Keyring | None
) -> Iterator[str]:
    try:
        event = decode_event(row.raw)
    except DecodeError as exc:
        yield f"does not decode: {exc}"
        return
    if event.id != row.id:
        yield "bytes do not hash to the stored id (altered on disk)"
    if (event.author, event.seq) != (row.author, row.seq):
        yield "stored under the wrong (author, seq)"
    genesis = event.kind == Kind.GENESIS and event.vault == ZERO32 and event.id == vault_id
    if event.vault != vault_id and not genesis:
        yield "belongs to another vault"
    if row.anchor and not signature_ok(event.author, event.sig, event.message):
        yield "signature does not verify (and we serve batches ending at this event)"
    expected_prev = ZERO32 if prev is None else prev.id
    if event.prev != expected_prev:
        yield "chain broken: prev does not name the previous event"
    if prev is not None and event.lamport <= prev.lamport:
        yield "chain broken: lamport does not increase"
    if keyring is not None and event.epoch and keyring.has(event.epoch):
        try:
            keyring.open_body(event)
        except IntegrityError as exc:
            yield f"body does not decrypt: {exc}"


def _signed(row: StoredEvent) -> bool:
    try:
        event = decode_event(row.raw)
    except DecodeError:
        return False
    return signature_ok(event.author, event.sig, event.message)


def _unvouched(rows: list[StoredEvent]) -> list[Problem]:
    """Non-anchor events no later valid signature vouched for; checked one by one."""
    found = [
        Problem(
            "event",
            "signature does not verify and no later signed event vouches for it",
            row.id,
            row.author,
            row.seq,
        )
        for row in rows
        if not _signed(row)
    ]
    rows.clear()
    return found


def walk(
    store: Store, keyring: Keyring | None = None, progress: Callable[[int], None] | None = None
) -> Report:
    """Check every event of every author in seq order; bounded memory."""
    report = Report()
    vault_id = store.vault_id
    prev: StoredEvent | None = None
    unvouched: list[StoredEvent] = []
    for row in store.iter_author_events():
        if prev is not None and prev.author != row.author:
            prev = None
            report.problems.extend(_unvouched(unvouched))
        if row.seq != (1 if prev is None else prev.seq + 1):
            report.problems.append(
                Problem("gap", f"log jumps to seq {row.seq}", row.id, row.author, row.seq)
            )
        for reason in _event_problems(row, vault_id, prev, keyring):
            report.problems.append(Problem("event", reason, row.id, row.author, row.seq))
        if not row.anchor:
            unvouched.append(row)
        elif _signed(row):
            unvouched.clear()  # a valid signature vouches for the chain below it
        report.events += 1
        if progress is not None and report.events % 10_000 == 0:
            progress(report.events)
        prev = row
    report.problems.extend(_unvouched(unvouched))
    for author, seq, event_id in store.equivocations():
        report.problems.append(
            Problem(
                "equivocation",
                "two signed events at one (author, seq); author frozen",
                event_id,
                author,
                seq,
            )
        )
    for author, count, first, reason in store.pending_summary():
        report.problems.append(
            Problem(
                "pending",
                f"{count} event(s) waiting from seq {first}: {reason}",
                None,
                author,
                first,
            )
        )
    return report
