"""Device removal: the new key epoch, the cutoff, the relay's refusal, concurrent changes.

Every replica here is a real home with a real SQLite file; "sync" hands every stored event of
one replica to another through the same accept path a network session uses.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventlog.accept import Log, Status
from eventlog.crypto import KxKey, SigningKey
from eventlog.envelope import decode_event
from eventlog.errors import MembershipError, MissingKeyError
from eventlog.membership import ROLE_INVITE
from eventlog.payload import decode_payload
from eventlog.store import Store
from replicas import inspect
from replicas.delegates import delegate_keys
from replicas.devices import remove_device
from replicas.home import Home
from replicas.vault import Replica, init_vault, open_replica
from tests.conftest import add_replica, all_raw
from transport.messages import CloseCode, ProtocolError
from transport.ports import member_may_connect


def sync(src: Replica, dst: Replica) -> None:
    for raw in all_raw(src):
        dst.engine.accept_remote(raw)


def relay_log(path: Path, vault_id: bytes) -> Log:
    """A relay's view of the vault: a store and a log, no keys, no documents."""
    store = Store.open(path, create=True)
    store.set_fact("vault_id", vault_id)
    return Log(store)


def last_event(replica: Replica) -> bytes:
    return all_raw(replica)[-1]


def test_removed_device_loses_the_new_epoch_and_its_later_events(
    trio: list[Replica], tmp_path: Path
) -> None:
    a, b, c = trio
    doc = a.engine.create_doc("before", "old text")
    a.engine.flush()
    sync(a, b)
    sync(a, c)
    c.engine.set_profile("c")
    sync(c, a)
    c_head = c.log.head(c.engine.me)
    assert c_head is not None
    c.engine.append_text(c.engine.resolve_doc(doc.hex()), " written by c, concurrently")
    c.engine.flush()
    late_c = last_event(c)  # a has not seen it: it lies beyond the cutoff

    result = remove_device(a, c.engine.me.hex()[:10])
    assert result["cutoff"] == c_head.seq
    new_epoch = a.engine.keyring.current_epoch
    assert new_epoch != 1 and a.home.vault_keys()[new_epoch] == a.engine.keyring.epochs()[new_epoch]
    secret = a.engine.create_doc("after", "sealed for the remaining members only")
    a.engine.flush()

    sync(a, b)
    assert b.engine.keyring.current_epoch == new_epoch  # adopted from the removal event
    assert b.home.vault_keys()[new_epoch]  # and saved, so a restart keeps it
    assert str(b.engine.open(secret).body) == "sealed for the remaining members only"
    assert c.engine.me in b.log.removed and c.engine.me not in b.log.roster

    # The removed device gets the events but not the key: nothing new opens for it.
    sync(a, c)
    assert new_epoch not in c.engine.keyring.epochs()
    sealed = [decode_event(r) for r in all_raw(a) if decode_event(r).epoch == new_epoch]
    assert sealed
    for event in sealed:
        with pytest.raises(MissingKeyError):
            c.engine.keyring.open_payload(event)
    removal = next(
        decode_event(r) for r in all_raw(a) if decode_event(r).id.hex() == result["event"]
    )
    with pytest.raises(MembershipError):  # it cannot write any more, even locally
        c.engine.set_profile("still here?")
    wrapped_for = decode_payload(removal.body)["keys"]
    assert c.engine.me not in wrapped_for and b.engine.me in wrapped_for

    # Its event written after the cutoff is refused everywhere, and not applied where it was.
    assert b.log.accept(late_c).status is Status.REVOKED
    assert b.log.version_vector()[c.engine.me].seq == c_head.seq
    assert "concurrently" not in str(b.engine.open(doc).body)
    assert "concurrently" not in str(c.engine.open(doc).body)  # c rebuilt without it, too


def test_a_catch_up_does_not_apply_what_a_removal_revoked(trio: list[Replica]) -> None:
    """A bulk pull stores first and applies later (``catch_up``, as the apply helper does).
    A removed device's record stored before the removal that revokes it must come out of
    the catch-up marked revoked, not applied — decided inside the applying transaction."""
    a, b, c = trio
    sync(a, c)
    c.engine.set_profile("c")
    sync(c, a)
    cutoff = c.log.head(c.engine.me)
    assert cutoff is not None
    late = c.engine.append_record({"t": "test.note", "text": "written after the cutoff"})
    remove_device(a, c.engine.me.hex()[:10])
    outcome = b.log.accept_batch([*all_raw(c), *all_raw(a)])  # stored, not yet applied
    late_id = decode_event(last_event(c)).id
    assert late_id in {x.event.id for x in outcome.accepted}  # stored before its removal
    assert b.log.revoked(c.engine.me, late.event.seq)
    b.engine.catch_up()
    row = b.store.event_by_id(late_id)
    assert row is not None
    note = b.store.query_one("SELECT note FROM event_index WHERE rowid = ?", (row.rowid,))
    assert note is not None and str(note[0]).startswith("revoked")


def test_the_relay_refuses_a_removed_device(trio: list[Replica], tmp_path: Path) -> None:
    a, b, c = trio
    relay = relay_log(tmp_path / "relay.db", a.log.vault_id)
    sync(a, c)
    c.engine.set_profile("c again")
    late_c = last_event(c)
    remove_device(a, c.engine.me.hex())
    relay.accept_batch(all_raw(a))
    assert c.engine.me in relay.removed
    with pytest.raises(ProtocolError) as refused:
        member_may_connect(relay, c.engine.me)
    assert refused.value.code == CloseCode.REMOVED
    assert member_may_connect(relay, b.engine.me)
    outcome = relay.accept_batch([late_c])  # relayed by someone: refused, not an error
    assert outcome.status is not Status.ACCEPTED
    assert outcome.dropped and "removed" in outcome.dropped[0][1]
    assert relay.store.event_by_id(decode_event(late_c).id) is None


def test_stored_events_beyond_a_late_cutoff_are_not_served(
    trio: list[Replica], tmp_path: Path
) -> None:
    a, b, c = trio
    relay = relay_log(tmp_path / "relay.db", a.log.vault_id)
    c.engine.set_profile("c, seen by a")
    sync(c, a)
    relay.accept_batch(all_raw(a))
    c.engine.set_profile("c before the news")
    relay.accept_batch(all_raw(c))  # the relay stores c's event: c is still a member there
    c_seq = relay.store.head(c.engine.me)
    assert c_seq is not None
    remove_device(a, c.engine.me.hex())  # a never saw that event: the cutoff is before it
    outcome = relay.accept_batch(all_raw(a))
    assert outcome.revoked_changed
    cap = relay.version_vector()[c.engine.me]
    assert cap.seq < c_seq.seq  # advertised (and served) only up to the cutoff
    sync(c, b)
    sync(a, b)
    assert b.log.version_vector()[c.engine.me].seq == cap.seq


def test_an_invite_made_before_the_removal_gets_the_new_epoch(
    trio: list[Replica], tmp_path: Path
) -> None:
    a, _, c = trio
    secret = b"\x05" * 32
    delegate, delegate_kx = delegate_keys(secret)
    a.engine.add_member(delegate.public, delegate_kx.public, ROLE_INVITE, expires_ms=2**62)
    remove_device(a, c.engine.me.hex())
    epoch = a.engine.keyring.current_epoch
    joiner = open_replica_like(a, tmp_path / "joiner")
    keys = joiner.engine.adopt_keys(delegate_kx, member=delegate.public)
    assert keys[epoch] == a.engine.keyring.epochs()[epoch]
    joiner.close()


def open_replica_like(founder: Replica, root: Path) -> Replica:
    """A fresh home holding everything ``founder`` holds, with no keys (a joiner)."""
    from replicas.vault import join_vault

    joined = join_vault(
        Home(root), founder.log.vault_id, SigningKey.generate(), KxKey.generate(), "j"
    )
    sync(founder, joined)
    return joined


def test_devices_lists_roles_epochs_and_removed(trio: list[Replica]) -> None:
    a, b, c = trio
    remove_device(a, c.engine.me.hex())
    rows = {r["id"]: r for r in inspect.devices(a)}
    me, other, gone = rows[a.engine.me.hex()], rows[b.engine.me.hex()], rows[c.engine.me.hex()]
    assert me["role"] == "owner" and not me["removed"] and len(me["epochs"]) == 2
    assert other["role"] == "full" and len(other["epochs"]) == 2
    assert gone["removed"] and gone["removed_by"] == a.engine.me.hex()
    assert gone["epochs"] == [1]  # never given the new one
    recovery = [r for r in rows.values() if r["role"] == "recovery"]
    assert recovery and len(recovery[0]["epochs"]) == 2


def test_removal_rules(trio: list[Replica]) -> None:
    a, b, c = trio
    with pytest.raises(MembershipError):
        a.engine.remove_member(a.engine.me)
    remove_device(a, c.engine.me.hex())
    with pytest.raises(MembershipError):
        a.engine.remove_member(c.engine.me)  # already removed
    sync(a, b)
    remove_device(b, a.engine.me.hex())  # a full device may remove the owner (a lost laptop)
    assert a.engine.me in b.log.removed


def test_a_restart_keeps_the_roster_and_keys(trio: list[Replica], tmp_path: Path) -> None:
    a, b, c = trio
    remove_device(a, c.engine.me.hex())
    sync(a, b)
    epoch = b.engine.keyring.current_epoch
    b.close()
    again = open_replica(Home(tmp_path / "b"))
    try:
        assert again.engine.keyring.current_epoch == epoch
        assert c.engine.me in again.log.removed
    finally:
        again.close()


def test_two_devices_removing_each_other_resolve_alike(trio: list[Replica], tmp_path: Path) -> None:
    a, b, _ = trio
    sync(a, b)
    sync(b, a)
    remove_device(a, b.engine.me.hex())
    remove_device(b, a.engine.me.hex())  # concurrently: neither has seen the other's
    first = relay_log(tmp_path / "one.db", a.log.vault_id)
    second = relay_log(tmp_path / "two.db", a.log.vault_id)
    for _ in range(2):  # a second round re-offers what a first removal had refused
        first.accept_batch(all_raw(a))
        first.accept_batch(all_raw(b))
        second.accept_batch(all_raw(b))
        second.accept_batch(all_raw(a))
    assert roster_view(first) == roster_view(second)
    assert first.version_vector() == second.version_vector()
    removed = set(first.removed)
    assert len(removed & {a.engine.me, b.engine.me}) == 1  # the first in (lamport, author) wins


def roster_view(log: Log) -> dict[bytes, tuple[str, bool, int | None]]:
    return {a: (m.role, m.active, m.cutoff) for a, m in log.fold.members.items()}


# --- any delivery order gives the same roster (hypothesis) ----------------------------------


@cache
def concurrent_roster_changes() -> tuple[bytes, tuple[bytes, ...]]:
    """A vault where four devices change the roster at once, without having synced:

    a (owner) removes b and adds e; b removes a; c removes d; d writes data. Made once (the
    events are the input of every example); returns the vault id and every event.
    """
    root = Path(tempfile.mkdtemp(prefix="shoal-roster-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    a = init_vault(Home(root / "a"), "a")
    others = [add_replica(a, root / name, name) for name in "bcd"]
    b, c, d = others
    for replica in others:
        sync(a, replica)
    e_signer, e_kx = SigningKey.generate(), KxKey.generate()
    remove_device(a, b.engine.me.hex())
    a.engine.add_member(e_signer.public, e_kx.public)
    remove_device(b, a.engine.me.hex())
    b.engine.set_profile("b after removing a")
    remove_device(c, d.engine.me.hex())
    d.engine.set_profile("d, unaware")
    raws: dict[bytes, bytes] = {}
    for replica in (a, b, c, d):
        for raw in all_raw(replica):
            raws[decode_event(raw).id] = raw
        replica.close()
    return a.log.vault_id, tuple(raws.values())


@contextlib.contextmanager
def fresh_log(vault_id: bytes) -> Iterator[Log]:
    with tempfile.TemporaryDirectory() as tmp:
        log = relay_log(Path(tmp) / "v.db", vault_id)
        try:
            yield log
        finally:
            log.store.close()


def deliver(log: Log, raws: list[bytes]) -> None:
    for raw in raws:
        with contextlib.suppress(MembershipError):
            log.accept(raw)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_delivery_order_gives_the_same_roster(data: st.DataObject) -> None:
    vault_id, raws = concurrent_roster_changes()
    order = data.draw(st.permutations(raws))
    with fresh_log(vault_id) as reference, fresh_log(vault_id) as shuffled:
        for _ in range(3):
            deliver(reference, list(raws))
        deliver(shuffled, list(order))
        for _ in range(2):  # sync rounds: peers re-offer what a roster change had refused
            deliver(shuffled, list(raws))
        assert roster_view(shuffled) == roster_view(reference)
        assert shuffled.version_vector() == reference.version_vector()
        assert shuffled.fold.rotations == reference.fold.rotations
        assert not shuffled.store.pending_count()
