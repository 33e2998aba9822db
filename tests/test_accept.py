"""The accept path: every rule of DESIGN.md's "Accepting an event", on a real store."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eventlog import database as database_module
from eventlog.accept import Log, Status, now_ms
from eventlog.crypto import KxKey, SigningKey, new_salt, seal
from eventlog.envelope import (
    SIG_LABEL,
    ZERO32,
    Event,
    Header,
    Kind,
    assemble,
    decode_event,
    encode_signed,
)
from eventlog.errors import (
    BadSignatureError,
    BrokenChainError,
    FrozenAuthorError,
    MembershipError,
    ShoalError,
    StorageError,
    WrongVaultError,
)
from eventlog.membership import member_add_payload
from eventlog.padding import pad
from eventlog.payload import encode_payload
from eventlog.sealing import Keyring, Position, author_event
from eventlog.store import Store
from replicas.vault import Replica
from tests.conftest import add_replica, all_raw


def note(
    replica: Replica,
    signer: SigningKey,
    position: Position,
    text: str = "hi",
    keyring: Keyring | None = None,
) -> Event:
    """A sealed data event by ``signer`` at ``position`` in ``replica``'s vault."""
    return author_event(
        signer,
        keyring or replica.engine.keyring,
        replica.log.vault_id,
        position,
        now_ms(),
        Kind.DATA,
        1,
        {"t": "note", "text": text},
    )


def member_signer(replica: Replica, tmp_path) -> tuple[SigningKey, Replica]:
    other = add_replica(replica, tmp_path / "other", "other")
    return other.engine.signer, other


def test_replay_is_a_noop(make_replica) -> None:
    a = make_replica("a")
    for raw in all_raw(a):
        assert a.log.accept(raw).status is Status.DUPLICATE
    assert a.store.event_count() == 4  # genesis, owner, profile, recovery


def test_wrong_vault_refused(make_replica) -> None:
    a, b = make_replica("a"), make_replica("b")
    count = b.store.event_count()
    for raw in all_raw(a):
        with pytest.raises(WrongVaultError):
            b.log.accept(raw)
    assert b.store.event_count() == count


def test_bad_signature_refused(make_replica, tmp_path) -> None:
    a = make_replica("a")
    signer, other = member_signer(a, tmp_path)
    event = note(a, signer, other.log.next_position(signer.public))
    forged = assemble(event.header, event.body, SigningKey.generate().sign(event.message))
    with pytest.raises(BadSignatureError):
        a.log.accept(forged.raw)
    body_swap = encode_signed(event.header, event.body + b"x")
    with pytest.raises(BadSignatureError):
        a.log.accept(assemble(event.header, event.body + b"x", event.sig, body_swap).raw)
    assert a.store.event_at(signer.public, 1) is None


def v1_note(replica: Replica, signer: SigningKey, position: Position, text: str) -> Event:
    """A data event as builds before format v2 wrote it: the signature covers the signed
    bytes, and the id is their BLAKE2b-256 (made here from our real sealing primitives)."""
    header = Header(
        replica.log.vault_id, signer.public, position.seq, position.prev, position.lamport,
        now_ms(), 1, Kind.DATA, new_salt(), v=1,
    )  # fmt: skip
    plaintext = pad(encode_payload({"t": "note", "text": text}))
    body = seal(replica.engine.keyring.events_key(1), header.nonce, plaintext,
                header.associated_data())  # fmt: skip
    signed = encode_signed(header, body)
    event = assemble(header, body, signer.sign(signed), signed)
    assert event.id == hashlib.blake2b(signed, digest_size=32).digest()
    return event


def test_a_v1_log_is_still_accepted_verified_and_read(make_replica, tmp_path) -> None:
    """Vaults written before v2 stay readable, and a log may go on in v2 after them: the
    v2 event's prev is the v1 event's BLAKE2b id, and one signature covers both."""
    a = make_replica("a")
    signer, other = member_signer(a, tmp_path)
    old = v1_note(a, signer, other.log.next_position(signer.public), "written by v1")
    new = note(a, signer, Position(old.seq + 1, old.id, old.lamport + 1), "written by v2")
    assert (old.header.v, new.header.v) == (1, 2)
    assert decode_event(new.raw).message == SIG_LABEL + blake3(new.signed).digest()
    a.log.accept_batch([old.raw, new.raw])
    for event, text in ((old, "written by v1"), (new, "written by v2")):
        row = a.store.event_at(signer.public, event.seq)
        assert row is not None and row.id == event.id
        assert a.engine.keyring.open_payload(row.decoded())["text"] == text


def test_a_signature_counts_only_for_its_format(make_replica, tmp_path) -> None:
    """A v1 event signed over its labelled id, or a v2 event signed over its bytes, is
    refused: the format version decides what the signature must cover."""
    a = make_replica("a")
    signer, other = member_signer(a, tmp_path)
    position = other.log.next_position(signer.public)
    old = v1_note(a, signer, position, "v1")
    new = note(a, signer, position, "v2")
    swapped = [
        assemble(old.header, old.body, signer.sign(SIG_LABEL + old.id), old.signed),
        assemble(new.header, new.body, signer.sign(new.signed), new.signed),
    ]
    for event in swapped:
        with pytest.raises(BadSignatureError):
            a.log.accept(event.raw)
    assert a.store.event_at(signer.public, position.seq) is None


def test_non_member_waits_then_joins(make_replica, tmp_path) -> None:
    a = make_replica("a")
    outsider = SigningKey.generate()
    event = note(a, outsider, Position(1, ZERO32, 10))
    assert a.log.accept(event.raw).status is Status.PENDING
    assert a.store.pending_count() == 1
    # The owner admits it: the parked event is drained in the same transaction.
    accepted = a.engine.add_member(outsider.public, KxKey.generate().public)
    assert accepted.event.kind == Kind.MEMBERSHIP
    assert a.store.pending_count() == 0
    assert a.store.event_at(outsider.public, 1).id == event.id
    assert a.log.accept(event.raw).status is Status.DUPLICATE


def test_gap_is_parked_and_drained_in_order(make_replica, tmp_path) -> None:
    a = make_replica("a")
    signer, other = member_signer(a, tmp_path)
    e1 = (
        other.log.append_local(signer, other.engine.keyring, Kind.DATA, 1, {"t": "note", "n": 1})
        .accepted[0]
        .event
    )
    e2 = (
        other.log.append_local(signer, other.engine.keyring, Kind.DATA, 1, {"t": "note", "n": 2})
        .accepted[0]
        .event
    )
    e3 = (
        other.log.append_local(signer, other.engine.keyring, Kind.DATA, 1, {"t": "note", "n": 3})
        .accepted[0]
        .event
    )
    assert a.log.accept(e3.raw).status is Status.PENDING
    assert a.log.accept(e2.raw).status is Status.PENDING
    outcome = a.log.accept(e1.raw)
    assert outcome.status is Status.ACCEPTED
    assert [x.event.seq for x in outcome.accepted] == [1, 2, 3]
    assert a.store.head(signer.public).seq == 3
    assert a.store.pending_count() == 0


def test_equivocation_keeps_evidence_and_freezes(make_replica, tmp_path) -> None:
    a = make_replica("a")
    signer, other = member_signer(a, tmp_path)
    position = other.log.next_position(signer.public)
    first, second = note(a, signer, position, "one"), note(a, signer, position, "two")
    assert a.log.accept(first.raw).status is Status.ACCEPTED
    assert a.log.accept(second.raw).status is Status.EQUIVOCATION
    ids = {i for _, _, i in a.store.equivocations()}
    assert ids == {first.id, second.id}
    assert signer.public in a.log.frozen
    nxt = Position(2, first.id, position.lamport + 1)
    with pytest.raises(FrozenAuthorError):
        a.log.accept(note(a, signer, nxt).raw)
    assert a.store.event_at(signer.public, 1).id == first.id


def test_broken_chain_refused(make_replica, tmp_path) -> None:
    a = make_replica("a")
    signer, _other = member_signer(a, tmp_path)
    e1 = note(a, signer, Position(1, ZERO32, 50))
    a.log.accept(e1.raw)
    with pytest.raises(BrokenChainError):
        a.log.accept(note(a, signer, Position(2, b"\x07" * 32, 51)).raw)
    with pytest.raises(BrokenChainError):
        a.log.accept(note(a, signer, Position(2, e1.id, 50)).raw)
    assert a.store.head(signer.public).seq == 1


def test_only_owners_manage_the_roster(make_replica, tmp_path) -> None:
    a = make_replica("a")
    signer, other = member_signer(a, tmp_path)
    payload = member_add_payload(SigningKey.generate().public, KxKey.generate().public, "full", {})
    event = author_event(
        signer,
        Keyring(),
        a.log.vault_id,
        other.log.next_position(signer.public),
        now_ms(),
        Kind.MEMBERSHIP,
        0,
        payload,
    )
    with pytest.raises(MembershipError):
        a.log.accept(event.raw)


def test_data_must_be_sealed(make_replica) -> None:
    a = make_replica("a")
    signer = a.engine.signer
    event = author_event(
        signer,
        Keyring(),
        a.log.vault_id,
        a.log.next_position(signer.public),
        now_ms(),
        Kind.DATA,
        0,
        {"t": "note", "text": "plain"},
    )
    with pytest.raises(MembershipError):
        a.log.accept(event.raw)


def test_unknown_payload_types_are_kept(make_replica, tmp_path) -> None:
    a = make_replica("a")
    signer, other = member_signer(a, tmp_path)
    event = note(a, signer, other.log.next_position(signer.public))
    a.engine.accept_remote(event.raw)
    row = a.store.query_one(
        "SELECT type, note FROM event_index i JOIN events e ON e.rowid = i.rowid WHERE e.id = ?",
        (event.id,),
    )
    assert row == ("note", None)


def test_decoded_event_is_exactly_what_was_stored(make_replica) -> None:
    a = make_replica("a")
    for row in a.store.events_after(0):
        assert decode_event(row.raw).id == row.id


def test_ids_are_found_whether_or_not_filed_yet(make_replica) -> None:
    """The id index is filed on demand (migration 0005); lookups see every stored event."""
    a = make_replica("a")
    first = a.engine.create_doc("one", "x")
    a.engine.flush()
    rows = a.store.events_after(0, 10**9)
    assert a.store.resolve_event(rows[-1].id.hex()[:12]).id == rows[-1].id
    filed = a.store.index_ids()
    assert filed == rows[-1].rowid
    a.engine.append_text(first, "y")
    a.engine.flush()
    newest = a.store.events_after(filed, 10)[-1]
    assert newest.rowid > filed
    path = a.store.path
    reader = Store.open_readonly(path)  # cannot file: finds the new event in the tail
    try:
        assert reader.index_ids() == filed
        assert reader.event_by_id(newest.id) is not None
        assert reader.resolve_event(newest.id.hex()[:10]).rowid == newest.rowid
        assert reader.event_by_id(bytes(32)) is None
    finally:
        reader.close()
    assert a.store.event_by_id(newest.id) is not None  # files it, then finds it in the index
    assert a.store.index_ids() == newest.rowid
    for row in a.store.events_after(0, 10**9):
        assert a.store.event_by_id(row.id) == row


def test_batches_served_from_memory_match_the_database(make_replica, tmp_path) -> None:
    """``serving_batch`` from the recent-events memory equals what SQLite alone gives."""
    a = make_replica("a")
    b = add_replica(a, tmp_path / "b", "b")
    signer = a.engine.signer
    author = signer.public
    for i in range(60):
        payload = {"t": "note", "text": "x" * (i * 37 % 300)}
        a.log.append_local(signer, a.engine.keyring, Kind.DATA, 1, payload)
    raws = [r.raw for r in a.store.range(author, 1, a.log.version_vector()[author].seq)]
    start = b.log.version_vector()[author].seq
    fresh = raws[start:]
    cut = 0
    for size in (7, 1, 13, 20, 5, 100):  # anchors at the tail of each received batch
        if cut < len(fresh):
            b.engine.accept_remote_batch(fresh[cut : cut + size])
            cut += size
    head = b.log.version_vector()[author].seq
    cold = Store.open(b.store.path)  # a second connection: nothing in memory
    try:
        assert cold.serving_batch(author, head + 1, head, 10, 10**6) == []
        served_from_memory = 0
        for first in range(start + 1, head + 1):
            for last in (first, first + 3, head):
                for max_events in (1, 4, 16, 64):
                    for max_bytes in (1, 600, 3000, 10**6):
                        for run_on in (True, False):
                            limits = (first, last, max_events, max_bytes, run_on)
                            expected = cold.serving_batch(author, *limits)
                            assert b.store.serving_batch(author, *limits) == expected, limits
                            assert run_on or len(expected) <= max_events
                        served_from_memory += bool(
                            b.store._recent_batch(author, first, last, max_events, max_bytes)
                        )
        assert served_from_memory > 0
    finally:
        cold.close()


def test_a_writer_gets_the_lock_another_process_held_once_it_is_free(tmp_path) -> None:
    """``Database._begin`` polls for the write lock; it must still get it, and in order."""
    store = Store.open(tmp_path / "v.db", create=True)
    other = sqlite3.connect(tmp_path / "v.db", isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO vault VALUES ('written', x'01')")
        threading.Timer(0.05, lambda: other.execute("COMMIT")).start()
        with store.atomic():  # waits for the other connection's commit, then writes
            store.conn.execute("UPDATE vault SET value = x'02' WHERE key = 'written'")
        assert store.get_fact("written") == b"\x02"
        busy = store.conn.execute("PRAGMA busy_timeout").fetchone()[0]
        assert busy == database_module.BUSY_TIMEOUT_MS  # every other statement keeps it
    finally:
        other.close()
        store.close()


def test_a_lock_held_past_the_busy_timeout_is_a_typed_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(database_module, "BUSY_TIMEOUT_MS", 50)
    store = Store.open(tmp_path / "v.db", create=True)
    other = sqlite3.connect(tmp_path / "v.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageError, match="cannot begin a transaction"), store.atomic():
            pass
        other.execute("ROLLBACK")
        with store.atomic():  # and the store is usable afterwards
            store.conn.execute("INSERT INTO vault VALUES ('after', x'03')")
        assert store.get_fact("after") == b"\x03"
    finally:
        other.close()
        store.close()


def test_a_failing_external_change_hook_leaves_no_transaction_open(tmp_path) -> None:
    """Another process's commit makes the next transaction run the reload hooks; one that
    fails must undo that transaction's BEGIN, or every later ``atomic()`` would fail."""
    store = Store.open(tmp_path / "v.db", create=True)
    other = sqlite3.connect(tmp_path / "v.db", isolation_level=None)
    failing = [True]

    def reload() -> None:
        if failing[0]:
            raise StorageError("reload failed")

    store.external_change_hooks.append(reload)
    try:
        store.poll_external_change()  # learn the current data version
        other.execute("INSERT INTO vault VALUES ('theirs', x'01')")
        with pytest.raises(StorageError, match="reload failed"), store.atomic():
            store.conn.execute("INSERT INTO vault VALUES ('lost', x'02')")
        assert not store.conn.in_transaction
        failing[0] = False
        other.execute("INSERT INTO vault VALUES ('again', x'03')")
        with store.atomic():
            store.conn.execute("INSERT INTO vault VALUES ('mine', x'04')")
        assert store.get_fact("mine") == b"\x04"
        assert store.get_fact("lost") is None
    finally:
        other.close()
        store.close()


# --- a run stored whole is what event-by-event admission stores ---------------------------------


def _outcome_or_error(log: Log, raws: list[bytes]) -> tuple[Any, ...]:
    try:
        o = log.accept_batch(raws)
    except ShoalError as exc:
        return (type(exc).__name__, str(exc))
    accepted = [(a.rowid, a.event.id) for a in o.accepted]
    return (o.status, o.event_id, accepted, o.dropped, o.heads, o.roster_changed)


def _tables(store: Store) -> tuple[list[tuple[Any, ...]], ...]:
    events = [tuple(row) for row in store.events_after(0, 1_000_000)]  # bytes from the pack too
    return (
        events,
        *tuple(
            store.query_all(sql)
            for sql in (
                "SELECT * FROM heads ORDER BY author",
                "SELECT author, seq, id, anchor FROM pending ORDER BY author, seq",
                "SELECT * FROM equivocations ORDER BY 1, 2",
            )
        ),
    )


@pytest.fixture(scope="module")
def two_logs_to_receive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A receiver's database and two authors' logs it lacks: the founder's, and a member's
    that the receiver's roster does not know yet (it was added after the receiver joined), so
    its events park until the founder's arrive. The founder's log holds, in order: the
    ``member.add`` of c, 6 data events, the removal of c with cutoff 5 (c's events 6-9
    are then revoked), 6 more data events."""
    from replicas.home import Home
    from replicas.vault import init_vault

    root = tmp_path_factory.mktemp("runs")
    a = init_vault(Home(root / "a"), "a")
    b = add_replica(a, root / "b", "b")
    c = add_replica(a, root / "c", "c")
    for i in range(9):
        c.engine.append_record({"t": "test.note", "n": i})
    for raw in all_raw(c)[:-4]:  # the founder holds c's first five events
        a.engine.accept_remote(raw)
    for i in range(12):
        if i == 6:
            a.engine.remove_member(c.engine.me)
        a.engine.append_record({"t": "test.note", "n": i})
    received = root / "b.db"
    with sqlite3.connect(received) as copy:
        b.store.conn.backup(copy)
    logs = {
        "a": [r.raw for r in a.store.events_after(0, 10**6) if r.author == a.engine.me],
        "c": [r.raw for r in c.store.events_after(0, 10**6) if r.author == c.engine.me],
    }
    for replica in (a, b, c):
        replica.close()
    return {"db": received, "logs": logs}


segment = st.tuples(st.sampled_from("ac"), st.integers(0, 20), st.integers(1, 14))
# The founder's log from index 5 on: [5] adds c, [6..11] data, [12] removes c, [13..18] data.
# c's log: its profile, then 9 data events; the removal's cutoff is its 6th event.


@example(batches=[[("a", 5, 1)], [("a", 9, 2)], [("a", 6, 6)]])  # a run fills a parked gap
@example(batches=[[("c", 2, 7)], [("a", 5, 1)], [("a", 6, 13)], [("c", 0, 9)]])  # removal
@example(batches=[[("c", 0, 4)], [("a", 5, 14)], [("c", 4, 6)]])  # a run across the cutoff
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.lists(segment, min_size=1, max_size=4), min_size=1, max_size=6))
def test_a_batch_stores_exactly_what_event_by_event_admission_stores(
    two_logs_to_receive: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, batches: Any
) -> None:
    """``Log._admit_run`` stores a run that continues its log in one insert; with gaps,
    duplicates, overlaps, interleaved authors, parked events and a membership event, every
    batch's outcome (or error) and every table must be what ``_admit`` per event gives."""
    logs = two_logs_to_receive["logs"]
    root = tmp_path_factory.mktemp("differential")
    stores = []
    for name in ("runs", "one_by_one"):
        path = Path(root / f"{name}.db")
        with sqlite3.connect(two_logs_to_receive["db"]) as src, sqlite3.connect(path) as dst:
            src.backup(dst)
        stores.append(Store.open(path))
    runs, one_by_one = Log(stores[0]), Log(stores[1])
    one_by_one._admit_run = lambda run, outcome: False  # type: ignore[method-assign]
    try:
        for batch in batches:
            raws = list(
                itertools.chain.from_iterable(
                    logs[who][start : start + n] for who, start, n in batch
                )
            )
            assert _outcome_or_error(runs, raws) == _outcome_or_error(one_by_one, raws)
            assert _tables(stores[0]) == _tables(stores[1])
    finally:
        for store in stores:
            store.close()


def test_a_run_whose_lamports_do_not_increase_is_refused_whole(make_replica, tmp_path) -> None:
    """Signed and chained by a member, but continuing its log wrongly: one lamport stands
    still, or the run's first event names another predecessor than the one we hold. The run
    path must notice both as ``_admit`` does, and nothing of the batch is stored."""
    a = make_replica("a")
    signer, _ = member_signer(a, tmp_path)
    first = note(a, signer, a.log.next_position(signer.public))
    a.log.accept(first.raw)  # we hold the author's seq 1: a run continues from there

    def chain(prev: bytes, steps: tuple[int, ...]) -> list[bytes]:
        raws = []
        for seq, step in enumerate(steps, first.seq + 1):
            event = note(a, signer, Position(seq, prev, first.lamport + step))
            raws.append(event.raw)
            prev = event.id
        return raws

    before = a.store.event_count()
    with pytest.raises(BrokenChainError, match="lamport"):
        a.log.accept_batch(chain(first.id, (1, 2, 2, 3)))
    with pytest.raises(BrokenChainError, match="prev"):
        a.log.accept_batch(chain(bytes(32), (1, 2, 3)))
    assert a.store.event_count() == before
    assert a.log.accept_batch(chain(first.id, (1, 2, 3))).status is Status.ACCEPTED


def test_a_run_of_a_frozen_author_is_refused(make_replica, tmp_path) -> None:
    """After an equivocation its author is frozen: a run that continues the log we hold
    of it is refused whole, on the run path as on ``_admit``."""
    a = make_replica("a")
    signer, _ = member_signer(a, tmp_path)
    at = a.log.next_position(signer.public)
    kept = note(a, signer, at, "one")
    a.log.accept(kept.raw)
    assert a.log.accept(note(a, signer, at, "two").raw).status is Status.EQUIVOCATION
    run, prev = [], kept.id
    for seq in (2, 3, 4):
        event = note(a, signer, Position(seq, prev, kept.lamport + seq))
        run.append(event.raw)
        prev = event.id
    with pytest.raises(FrozenAuthorError):
        a.log.accept_batch(run)
    assert a.store.head(signer.public).seq == 1


def test_a_run_that_continues_its_log_is_stored_whole(
    two_logs_to_receive: dict[str, Any], tmp_path: Path
) -> None:
    """The path the differential test above compares is the one a sync takes."""
    path = tmp_path / "b.db"
    with sqlite3.connect(two_logs_to_receive["db"]) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    log = Log(Store.open(path))
    whole: list[bool] = []
    admit_run = log._admit_run

    def watched(run: list[Event], outcome: Any) -> bool:
        whole.append(admit_run(run, outcome))
        return whole[-1]

    log._admit_run = watched  # type: ignore[method-assign]
    founder = two_logs_to_receive["logs"]["a"]
    held = log.head(decode_event(founder[0]).author)
    assert held is not None
    log.accept_batch(founder[held.seq : held.seq + 1])  # the member.add of c: one by one
    outcome = log.accept_batch(founder[held.seq + 1 : held.seq + 6])  # five data events
    assert whole == [False, True] and len(outcome.accepted) == 5
    anchors = log.store.query_all("SELECT anchor FROM events ORDER BY rowid DESC LIMIT 5")
    assert [a for (a,) in anchors] == [1, 0, 0, 0, 0]  # the run's last signature vouches
    log.store.close()


def test_a_read_snapshot_is_consistent_and_a_write_inside_ends_it(tmp_path) -> None:
    """``Database.reading``: queries inside see one state while another process commits; a
    write transaction opened inside ends the snapshot (then reads see the latest state), and
    a nested ``reading`` leaves the outer snapshot to its owner."""
    store = Store.open(tmp_path / "v.db", create=True)
    other = sqlite3.connect(tmp_path / "v.db", isolation_level=None)
    try:
        store.set_fact("n", b"1")
        with store.reading():
            assert store.get_fact("n") == b"1"
            other.execute("UPDATE vault SET value = x'32' WHERE key = 'n'")  # commits "2"
            with store.reading():
                assert store.get_fact("n") == b"1"
            assert store.get_fact("n") == b"1"  # still the snapshot: the inner one did not end it
            store.set_fact("mine", b"x")  # a write: the snapshot ends first
            assert store.get_fact("n") == b"2"
        assert not store.conn.in_transaction
        assert store.get_fact("mine") == b"x"
    finally:
        other.close()
        store.close()


def test_a_migration_another_process_ran_first_is_skipped_not_failed(tmp_path) -> None:
    """``serve`` and a CLI command opening one home at once both read the old schema
    version; the one that gets the write lock second must find the work done, not run the
    script again ("table ... already exists")."""
    from eventlog.migrate import apply_migration

    first = sqlite3.connect(tmp_path / "v.db", isolation_level=None)
    second = sqlite3.connect(tmp_path / "v.db", isolation_level=None)
    try:
        for conn in (first, second):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (component TEXT NOT NULL,"
                " version INTEGER NOT NULL, name TEXT NOT NULL, applied_ms INTEGER NOT NULL,"
                " PRIMARY KEY (component, version))"
            )
        script = "CREATE TABLE made (x INTEGER);"
        assert apply_migration(first, "test", 1, "0001_made.sql", script)
        assert not apply_migration(second, "test", 1, "0001_made.sql", script)
        with pytest.raises(StorageError, match=r"migration test/0002_bad\.sql failed"):
            apply_migration(second, "test", 2, "0002_bad.sql", "CREATE TABLE made (y);")
        rows = first.execute("SELECT version FROM schema_migrations").fetchall()
        assert rows == [(1,)]  # the failed one left no record
    finally:
        first.close()
        second.close()
