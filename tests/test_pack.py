"""Big events' bytes in the pack file (``eventlog.pack``): stored, read back, rolled back,
shared by two connections, and refused loudly when the file is damaged."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventlog.envelope import decode_event
from eventlog.errors import StorageError
from eventlog.pack import IOV_BATCH, PACK_MIN, Pack, pack_path
from replicas.deep_verify import deep_verify
from replicas.home import Home
from replicas.vault import Replica, init_vault, open_replica
from tests.conftest import all_raw


def blob(replica: Replica, size: int) -> bytes:
    """Append a record of about ``size`` bytes; returns its event id."""
    return replica.engine.append_record({"t": "test.blob", "data": os.urandom(size)}).event.id


def packed_ids(replica: Replica) -> set[bytes]:
    rows = replica.store.query_all("SELECT id FROM events WHERE pack_at IS NOT NULL")
    return {bytes(row[0]) for row in rows}


def payloads(replica: Replica) -> dict[bytes, bytes]:
    """Every event's id -> its opened payload's data, read through the store."""
    found = {}
    for row in replica.store.events_after(0, 10**6):
        event = decode_event(row.raw)  # the strict decode: the id is recomputed from bytes
        assert event.id == row.id
        if row.epoch:
            payload = replica.engine.keyring.open_payload(event)
            if payload["t"] == "test.blob":
                found[row.id] = payload["data"]
    return found


def test_big_events_go_to_the_pack_and_read_back_byte_exact(make_replica) -> None:
    a = make_replica("a")
    small, big = blob(a, 100), blob(a, 3 * PACK_MIN)
    assert packed_ids(a) == {big}
    assert a.store.query_one("SELECT raw FROM events WHERE id = ?", (big,)) == (b"",)
    pack = pack_path(a.store.path)
    assert stat.S_IMODE(pack.stat().st_mode) == 0o600
    expected = payloads(a)
    assert set(expected) == {small, big}
    reopened = open_replica(a.home)  # a second connection, nothing in memory
    try:
        assert payloads(reopened) == expected
        assert all_raw(reopened) == all_raw(a)
        assert reopened.store.bytes_held() == sum(map(len, all_raw(a)))
        author = a.engine.me
        head = a.log.version_vector()[author].seq
        assert reopened.store.serving_batch(author, 1, head, 100, 10**8) == [
            row.raw for row in a.store.range(author, 1, head)
        ]
    finally:
        reopened.close()


def test_a_rolled_back_append_leaves_nothing_and_its_space_is_reused(make_replica) -> None:
    a = make_replica("a")
    kept = blob(a, 2 * PACK_MIN)
    end = a.store.query_one("SELECT at FROM pack_end")
    with pytest.raises(RuntimeError), a.store.atomic():
        blob(a, 5 * PACK_MIN)
        raise RuntimeError("the transaction fails after the bytes were written")
    pack = pack_path(a.store.path)
    assert end is not None and pack.stat().st_size > end[0]  # the bytes are there, unnamed
    assert a.store.query_one("SELECT at FROM pack_end") == end
    after = blob(a, 2 * PACK_MIN)
    at = a.store.query_one("SELECT pack_at FROM events WHERE id = ?", (after,))
    assert at == end  # written over the rolled-back bytes
    assert set(payloads(a)) == {kept, after}


def test_two_connections_on_one_home_append_in_turn(make_replica) -> None:
    """A daemon and its folder worker share a home: each appends at the end the other left."""
    a = make_replica("a")
    other = open_replica(a.home)
    try:
        written = [blob(replica, PACK_MIN + n * 1000) for n in range(6) for replica in (a, other)]
        assert packed_ids(a) == set(written)
        assert payloads(a) == payloads(other)
        assert len(payloads(a)) == len(written)
    finally:
        other.close()


def test_a_truncated_pack_is_a_typed_error_and_deep_verify_reads_the_pack(make_replica) -> None:
    a = make_replica("a")
    blob(a, 4 * PACK_MIN)
    assert deep_verify(a) == []  # its scratch copy reads the original's pack
    pack = pack_path(a.store.path)
    with open(pack, "r+b") as f:
        f.truncate(PACK_MIN)
    with pytest.raises(StorageError, match="shorter than the events stored in it"):
        all_raw(a)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["first", "second"]),
            st.lists(st.integers(100, 3 * PACK_MIN), min_size=1, max_size=3),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_what_commits_reads_back_whatever_rolled_back_between(steps) -> None:
    """Any interleaving of two connections' transactions, each of several events of mixed
    sizes, committed or rolled back: exactly the committed events read back, byte-exact,
    from either connection."""
    with tempfile.TemporaryDirectory() as tmp:
        first = init_vault(Home(Path(tmp) / "a"), "a")
        second = open_replica(first.home)
        try:
            committed: set[bytes] = set()
            for who, sizes, commit in steps:
                replica = first if who == "first" else second
                ids: list[bytes] = []
                with contextlib.suppress(RuntimeError), replica.store.atomic():
                    ids = [blob(replica, size) for size in sizes]
                    if not commit:
                        raise RuntimeError("roll back")
                if commit:
                    committed.update(ids)
            assert set(payloads(first)) == committed
            assert payloads(first) == payloads(second)
        finally:
            second.close()
            first.close()


def test_a_run_longer_than_one_system_call_takes_is_written_whole(tmp_path: Path) -> None:
    """``pwritev`` takes at most 1,024 buffers: a longer run is written in groups, back to
    back, each where the one before it ended."""
    pack = Pack(tmp_path / "v.pack")
    raws = [bytes([n % 251]) * (1 + n % 7) for n in range(3 * IOV_BATCH + 5)]
    try:
        pack.write(10, raws)
        pack.sync()
        assert pack.read(10, sum(map(len, raws))) == b"".join(raws)
    finally:
        pack.close()
