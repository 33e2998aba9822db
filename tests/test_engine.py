"""The engine: coalescing, echo filtering, snapshots, rebuild, time travel, subscriptions."""

from __future__ import annotations

import asyncio

from engine import views
from engine.engine import SNAPSHOT_EVERY
from eventlog.accept import Status
from replicas.vault import open_replica
from tests.conftest import all_raw


def doc_events(replica, doc: bytes) -> list[views.LogRow]:
    return views.log(replica.store, doc=doc)


def test_rapid_edits_are_coalesced(make_replica) -> None:
    a = make_replica("a")
    a.engine.max_delay = 3600
    doc = a.engine.create_doc("typing")
    for ch in "hello world":
        a.engine.append_text(doc, ch)
    assert doc_events(a, doc) == []  # nothing written yet: still inside the delay
    a.engine.flush()
    assert len(doc_events(a, doc)) == 1
    assert str(a.engine.open(doc).body) == "hello world"


def test_coalescing_is_bounded_by_edits_and_delay(make_replica) -> None:
    a = make_replica("a")
    a.engine.max_delay, a.engine.max_edits = 3600, 10
    doc = a.engine.create_doc("bulk")
    for i in range(95):
        a.engine.append_text(doc, str(i % 10))
    assert len(doc_events(a, doc)) == 9  # 96 edits incl. the creation -> 9 full batches
    a.engine.max_delay = 0
    a.engine.append_text(doc, "!")
    assert len(doc_events(a, doc)) == 10


def test_close_flushes(make_replica) -> None:
    a = make_replica("a")
    a.engine.max_delay = 3600
    doc = a.engine.create_doc("t", "body")
    home = a.home
    a.close()
    b = open_replica(home)
    try:
        assert str(b.engine.open(doc).body) == "body"
    finally:
        b.close()


def test_own_events_echoed_back_are_not_applied_twice(make_replica) -> None:
    a = make_replica("a")
    doc = a.engine.create_doc("t", "once")
    a.engine.flush()
    for raw in all_raw(a):
        assert a.engine.accept_remote(raw).status is Status.DUPLICATE
    assert str(a.engine.open(doc).body) == "once"
    assert views.list_docs(a.store)[0].events == 1


def test_snapshot_bounds_replay_and_matches_log(make_replica) -> None:
    a = make_replica("a")
    a.engine.max_edits = 1
    doc = a.engine.create_doc("long")
    for i in range(SNAPSHOT_EVERY * 2 + 7):
        a.engine.append_text(doc, f"{i},")
    home = a.home
    expected = str(a.engine.open(doc).body)
    a.close()
    b = open_replica(home)
    try:
        snap_rowid, since = b.store.query_one(  # type: ignore[misc]
            "SELECT upto_rowid, since_snapshot FROM snapshots JOIN docs USING (doc) WHERE doc = ?",
            (doc,),
        )
        assert snap_rowid > 0 and since == 0  # close() snapshotted: open replays nothing
        assert str(b.engine.open(doc).body) == expected
        # A document opened from an older snapshot plus a tail is the same document.
        b.store.conn.execute("DELETE FROM snapshots")
        b.engine._live.clear()
        assert str(b.engine.open(doc).body) == expected
    finally:
        b.close()


def test_rebuild_from_log_equals_live_state(trio) -> None:
    a, b, _ = trio
    d1 = a.engine.create_doc("one", "alpha\n")
    d2 = b.engine.create_doc("two", "beta\n")
    a.engine.flush()
    b.engine.flush()
    for raw in all_raw(b):
        a.engine.accept_remote(raw)
    a.engine.append_text(d2, "from a\n")
    a.engine.add_tag(d1, "x")
    a.engine.flush()

    def state() -> tuple[object, ...]:
        docs = views.list_docs(a.store)
        return (
            [(d.doc, d.title, d.tags, d.size, d.events) for d in docs],
            {d.doc: str(a.engine.open(d.doc).body) for d in docs},
            views.replica_names(a.store),
            a.store.query_all("SELECT rowid, type, doc, size, note FROM event_index"),
        )

    before = state()
    a.engine.rebuild()
    assert state() == before


def test_time_travel(make_replica) -> None:
    a = make_replica("a")
    a.engine.max_edits = 1
    doc = a.engine.create_doc("t", "one\n")
    a.engine.append_text(doc, "two\n")
    a.engine.set_title(doc, "renamed")
    a.engine.append_text(doc, "three\n")
    rows = sorted(doc_events(a, doc), key=lambda r: r.lamport)
    bodies = []
    for row in rows:
        at = a.store.event_by_id(row.id)
        state = views.state_at(a.store, a.engine.keyring, doc, at)
        bodies.append((state.title, state.body))
    assert bodies == [
        ("t", "one\n"),
        ("t", "one\ntwo\n"),
        ("renamed", "one\ntwo\n"),
        ("renamed", "one\ntwo\nthree\n"),
    ]


def test_time_travel_is_the_same_on_every_replica(trio) -> None:
    a, b, _ = trio
    doc = a.engine.create_doc("shared", "base\n")
    a.engine.flush()
    for raw in all_raw(a):
        b.engine.accept_remote(raw)
    a.engine.append_text(doc, "from a\n")
    b.engine.append_text(doc, "from b\n")
    a.engine.flush()
    b.engine.flush()
    for raw in all_raw(b):
        a.engine.accept_remote(raw)
    for raw in all_raw(a):
        b.engine.accept_remote(raw)
    for row in doc_events(a, doc):
        at_a = a.store.event_by_id(row.id)
        at_b = b.store.event_by_id(row.id)
        assert views.state_at(a.store, a.engine.keyring, doc, at_a) == views.state_at(
            b.store, b.engine.keyring, doc, at_b
        )


def test_subscription_sees_local_and_remote_events(trio) -> None:
    a, b, _ = trio

    async def scenario() -> list[tuple[str | None, bytes]]:
        sub = a.engine.subscribe()
        seen: list[tuple[str | None, bytes]] = []

        async def consume() -> None:
            async for row in sub:
                seen.append((row.type, row.author))
                if len(seen) == 2:
                    sub.close()

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)
        a.engine.create_doc("local")
        a.engine.flush()
        await asyncio.sleep(0)
        b.engine.create_doc("remote")
        b.engine.flush()
        for raw in all_raw(b)[-1:]:
            a.engine.accept_remote(raw)
        await asyncio.wait_for(task, 5)
        return seen

    seen = asyncio.run(scenario())
    assert seen == [("doc.update", a.engine.me), ("doc.update", b.engine.me)]


def test_late_subscriber_catches_up_from_a_cursor(make_replica) -> None:
    a = make_replica("a")
    for i in range(5):
        a.engine.create_doc(f"d{i}")
        a.engine.flush()

    async def read_all() -> int:
        sub = a.engine.subscribe(after=0)
        count = 0
        async for _ in sub:
            count += 1
            if count == a.store.event_count():
                sub.close()
        return count

    assert (
        asyncio.run(asyncio.wait_for(read_all(), 5)) == 9
    )  # genesis, member, profile, recovery, 5 docs


def test_events_hold_no_plaintext(trio) -> None:
    a, b, _ = trio
    planted = ["Quarterly-Secret-Title-7731", "the body says PLANTED-BODY-41823"]
    doc = a.engine.create_doc(planted[0], planted[1])
    a.engine.add_tag(doc, "PLANTED-TAG-552")
    a.engine.flush()
    for raw in all_raw(a):
        b.engine.accept_remote(raw)
    needles = [*planted, "PLANTED-TAG-552"]
    for replica in (a, b):
        for raw in all_raw(replica):
            for needle in needles:
                assert needle.encode() not in raw
                assert needle.encode("utf-16-le") not in raw
    # ... while the trusted home can read them.
    assert str(b.engine.open(doc).body) == planted[1]


def test_events_stored_without_the_engine_are_applied_before_a_new_one(trio) -> None:
    """A bulk sync stores events and leaves them to its helper process; a write made here in
    the meantime applies them first, so the watermark never passes an unapplied event."""
    a, b, _ = trio
    doc = a.engine.create_doc("shared", "from a\n")
    for i in range(30):
        a.engine.append_text(doc, f"a{i}\n")
        a.engine.flush()
    outcome = b.log.accept_batch(all_raw(a))  # stored, not applied
    assert len(outcome.accepted) > 30
    assert b.engine.applied_upto() < b.store.last_rowid()
    mine = b.engine.create_doc("b's own", "from b\n")
    b.engine.flush()
    assert b.engine.applied_upto() == b.store.last_rowid()
    indexed = b.store.query_one("SELECT count(*) FROM event_index")
    assert indexed == (b.store.event_count(),)
    assert str(b.engine.open(doc).body) == str(a.engine.open(doc).body)
    assert str(b.engine.open(mine).body) == "from b\n"
    before = [(d.doc, d.events, d.size) for d in views.list_docs(b.store)]
    b.engine.rebuild()
    assert [(d.doc, d.events, d.size) for d in views.list_docs(b.store)] == before
