"""What the inspection commands report: status, one event in detail, and verification.

Plain data (dicts of str/int/bool/lists) so the CLI can print it as a table or as ``--json``
with the same, stable keys.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from engine import files, views
from eventlog.accept import now_ms
from eventlog.crypto import signature_ok
from eventlog.envelope import Kind, decode_event
from eventlog.errors import DecodeError, IntegrityError, StorageError
from eventlog.integrity import Report, walk
from eventlog.membership import DEVICE_ROLES, Member, wrapped_keys
from eventlog.payload import decode_payload
from eventlog.store import StoredEvent
from replicas.vault import Replica


def kind_name(kind: int) -> str:
    try:
        return Kind(kind).name.lower()
    except ValueError:
        return f"kind-{kind}"


def status(replica: Replica) -> dict[str, Any]:
    store, log = replica.store, replica.log
    names = views.replica_names(store)
    vv = store.version_vector()
    docs = store.query_one("SELECT count(*) FROM docs")
    last_verify = store.get_fact("last_verify")
    counted = store.query_one("SELECT count(*) FROM files WHERE deleted = 0")
    conflicts = store.query_all("SELECT path FROM files WHERE heads > 1 ORDER BY path")
    return {
        "vault": log.vault_id.hex(),
        "replica": replica.engine.me.hex(),
        "name": replica.name,
        "events": store.event_count(),
        "documents": int(docs[0]) if docs else 0,
        "files": int(counted[0]) if counted else 0,
        "conflicts": [str(row[0]) for row in conflicts],
        "clashes": files.clashes(store),
        "members": len(log.roster),
        "epoch": replica.engine.keyring.current_epoch,
        "version_vector": {
            a.hex(): {"seq": h.seq, "id": h.id.hex(), "name": names.get(a, "")}
            for a, h in sorted(vv.items())
        },
        "pending": store.pending_count(),
        "equivocations": len(store.equivocations()),
        "frozen": sorted(a.hex() for a in log.frozen),
        "last_verify": last_verify.decode() if last_verify else None,
    }


def payload_summary(payload: dict[str, Any]) -> dict[str, Any]:
    """A printable view of a payload: bytes as hex (long ones as their length), at any
    depth (a ``file.put``'s chunk list, a ``file.batch``'s records)."""
    return {str(key): _printable(value) for key, value in payload.items()}


def _printable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex() if len(value) <= 32 else f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return payload_summary(value)
    if isinstance(value, list):
        return [_printable(item) for item in value]
    return value


def show_event(replica: Replica, row: StoredEvent) -> dict[str, Any]:
    names = views.replica_names(replica.store)
    info: dict[str, Any] = {"id": row.id.hex(), "rowid": row.rowid}
    try:
        event = decode_event(row.raw)
    except DecodeError as exc:
        info.update(decodes=False, error=str(exc))
        return info
    info.update(
        decodes=True,
        version=event.header.v,
        vault=event.vault.hex(),
        author=event.author.hex(),
        author_name=names.get(event.author, ""),
        seq=event.seq,
        prev=event.prev.hex(),
        lamport=event.lamport,
        time_ms=event.time_ms,
        epoch=event.epoch,
        kind=kind_name(event.kind),
        nonce=event.header.nonce.hex(),
        body_bytes=len(event.body),
        size=len(row.raw),
        id_matches=event.id == row.id,
        signature="valid" if signature_ok(event.author, event.sig, event.message) else "INVALID",
    )
    try:
        body = replica.engine.keyring.open_body(event)
        info["payload"] = payload_summary(decode_payload(body))
    except (IntegrityError, DecodeError) as exc:
        info["payload_error"] = str(exc)
    return info


def verify(replica: Replica) -> tuple[Report, list[str]]:
    """Walk the log (see ``eventlog.integrity``) and SQLite's own integrity check."""
    sqlite_problems: list[str] = []
    try:
        rows = replica.store.conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"database is corrupt: {exc}") from exc
    sqlite_problems = [r[0] for r in rows if r[0] != "ok"]
    report = walk(replica.store, replica.engine.keyring)
    verdict = "ok" if report.ok and not sqlite_problems else "FAILED"
    replica.store.set_fact("last_verify", f"{verdict} at {now_ms()}".encode())
    return report, sqlite_problems


def devices(replica: Replica) -> list[dict[str, Any]]:
    """The roster: every member key ever, with its role, who added (and removed) it, the key
    epochs it was given, and whether it is still a member."""
    names = views.replica_names(replica.store)
    fold = replica.log.fold
    given = _epochs_given(replica)
    out = []
    for member in sorted(fold.members.values(), key=lambda m: (m.added_ms, m.author)):
        used = replica.store.head(member.author) is not None
        out.append(
            {
                "id": member.author.hex(),
                "name": names.get(member.author, ""),
                "role": member.role,
                "added_by": member.added_by.hex(),
                "added_by_name": names.get(member.added_by) or _delegate_role(replica, member),
                "added_ms": member.added_ms,
                "expires_ms": member.expires_ms or None,
                "used": used,
                "this_replica": member.author == replica.engine.me,
                "removed": not member.active,
                "removed_by": member.removed_by.hex() if member.removed_by else None,
                "removed_ms": member.removed_ms or None,
                "cutoff": member.cutoff,
                "epochs": sorted(given.get(member.author, ())),
            }
        )
    return out


def _epochs_given(replica: Replica) -> dict[bytes, set[int]]:
    """Which epoch keys were wrapped for each member (its member.add, then each removal)."""
    given: dict[bytes, set[int]] = {}
    for member in replica.log.fold.members.values():
        row = replica.store.event_by_id(member.added_event)
        if row is None:
            continue
        try:
            payload = decode_payload(decode_event(row.raw).body)
        except DecodeError:
            continue
        given[member.author] = set(wrapped_keys(payload)) if payload.get("keys") else set()
    for _, removal in replica.log.fold.rotations:
        for author in removal.keys:
            given.setdefault(author, set()).add(removal.epoch)
    return given


def _delegate_role(replica: Replica, member: Member) -> str:
    """Devices admitted by an invite or the recovery key show that instead of a name."""
    adder = replica.log.roster.get(member.added_by)
    return f"({adder.role})" if adder is not None and adder.role not in DEVICE_ROLES else ""
