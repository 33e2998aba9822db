"""``file.batch``: a folder batch's file records in one event (design note 32).

What must hold: a batch makes exactly the versions the same records would make one event
each (same bases, same winners, byte-exact content on every replica), a malformed batch is
inert as a whole, and the old one-version-per-event numbering migrates in place.
"""

from __future__ import annotations

import io
import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import files
from engine.documents import new_doc_id
from engine.ingest import FileWriter
from eventlog.envelope import decode_event
from eventlog.migrate import migrate
from eventlog.payload import Payload
from replicas.deep_verify import deep_verify
from replicas.filesout import content
from replicas.home import Home
from replicas.vault import Replica, init_vault
from tests.conftest import add_replica, all_raw
from tests.test_cli import run_json
from tests.test_files import current, exchange, folder, noise


def author(raw: bytes) -> bytes:
    return decode_event(raw).author


def batch_events(replica: Replica) -> list[int]:
    """How many file records each ``file.batch`` event of the vault holds."""
    rows = replica.store.query_all(
        "SELECT rowid FROM event_index WHERE type = 'file.batch' ORDER BY rowid"
    )
    counts = []
    for (rowid,) in rows:
        low, high = files.place(int(rowid), 0), files.place(int(rowid) + 1, 0)
        found = replica.store.query_one(
            "SELECT count(*) FROM file_versions WHERE rowid >= ? AND rowid < ?", (low, high)
        )
        assert found is not None
        counts.append(int(found[0]))
    return counts


def listing(replica: Replica) -> dict[str, tuple[bool, bytes | None, int, int, bool]]:
    return {
        e.path: (e.deleted, e.hash, e.size, e.versions, e.conflict)
        for e in files.file_entries(replica.store, deleted=True)
    }


def test_a_folder_batch_is_one_event_and_syncs_byte_exact(
    trio: list[Replica], tmp_path: Path
) -> None:
    a, b = trio[0], trio[1]
    src, _ = folder(a, tmp_path / "src")
    data = {f"d{i % 3}/f{i}.bin": noise(100 + i * 37, i) for i in range(40)}
    data["copy.bin"] = data["d1/f1.bin"]  # the same content twice in one batch: stored once
    for path, blob in data.items():
        (src.root / path).parent.mkdir(exist_ok=True)
        (src.root / path).write_bytes(blob)
    result = src.scan()
    assert (result.added, result.problems) == (41, [])
    assert result.new_bytes == sum(len(blob) for path, blob in data.items() if path != "copy.bin")
    assert batch_events(a) == [41]
    assert a.store.query_one("SELECT count(*) FROM event_index WHERE type = 'file.put'") == (0,)
    stored = a.store.query_one("SELECT count(*) FROM chunks")
    assert stored == (40,)
    exchange(a, b)
    for path, blob in data.items():
        assert current(b, path) == blob
    mirror, reports = folder(b, tmp_path / "b-dir", mirror=True)
    assert mirror.scan().written == 41 and reports == []
    for path, blob in data.items():
        assert (mirror.root / path).read_bytes() == blob
    # edits and deletions of many files are batches too, and name the versions they replace
    for i in range(0, 40, 2):
        (src.root / f"d{i % 3}/f{i}.bin").write_bytes(noise(50, 1000 + i))
    for i in range(1, 40, 4):
        (src.root / f"d{i % 3}/f{i}.bin").unlink()
    result = src.scan()
    assert (result.changed, result.deleted) == (20, 10)
    assert sorted(batch_events(a)[1:]) == [10, 20]
    exchange(a, b)
    assert listing(b) == listing(a)
    assert not any(conflict for *_, conflict in listing(a).values())
    assert deep_verify(a) == [] and deep_verify(b) == []


def test_get_at_and_log_name_a_batched_version(trio: list[Replica], tmp_path: Path) -> None:
    a = trio[0]
    src, _ = folder(a, tmp_path / "src")
    first = {f"f{i}.bin": noise(300, i) for i in range(3)}
    for path, blob in first.items():
        (src.root / path).write_bytes(blob)
    src.scan()
    (batch,) = a.store.query_all("SELECT rowid FROM event_index WHERE type = 'file.batch'")
    event = a.store.event_by_rowid(int(batch[0]))
    assert event is not None
    (src.root / "f1.bin").write_bytes(b"\x00second version")
    src.scan()
    doc = files.entry_at_path(a.store, "f1.bin")
    assert doc is not None
    assert b"".join(content(a, doc.doc_id, event.id.hex()[:16])) == first["f1.bin"]
    assert b"".join(content(a, doc.doc_id, None)) == b"\x00second version"
    history = run_json(a.home.root, "log", "--doc", "f1.bin")
    assert [row["type"] for row in history] == ["file.put", "file.batch"]
    assert run_json(a.home.root, "history", doc.doc_id.hex()[:12]) == history
    shown = run_json(a.home.root, "show", event.id.hex())
    assert shown["payload"]["t"] == "file.batch"
    assert sorted(record["path"] for record in shown["payload"]["files"]) == sorted(first)


def test_a_record_for_a_file_already_in_the_batch_sees_the_one_before(
    trio: list[Replica],
) -> None:
    """Records wait in the batch unwritten: a second change of the same file (path or
    document) writes the batch first, so it supersedes the first instead of clashing."""
    a = trio[0]
    writer = FileWriter(a.engine)
    with writer.batch():
        one = writer.put("x.bin", io.BytesIO(b"\x00one"), mtime_ms=1)
        two = writer.put("x.bin", io.BytesIO(b"\x00two"), mtime_ms=2)
        writer.put("y.bin", io.BytesIO(b"\x00why"), mtime_ms=3)
        writer.rename(one.doc_id, "z.bin", mtime_ms=4)
        writer.delete(one.doc_id)
    assert one.doc_id == two.doc_id
    assert files.clashes(a.store) == [] and files.conflicts(a.store) == []
    assert {e.path for e in files.file_entries(a.store)} == {"y.bin"}
    assert [v.path for v in files.versions(a.store, one.doc_id)] == ["x.bin"] * 2 + ["z.bin"] * 2
    assert len(files.heads(a.store, one.doc_id)) == 1


@pytest.mark.parametrize(
    "records",
    [
        pytest.param("twice", id="a document named twice"),
        pytest.param("bad-record", id="one malformed record"),
        pytest.param("empty", id="no records"),
        pytest.param("not-a-file-record", id="a record of another type"),
    ],
)
def test_a_malformed_batch_is_inert_as_a_whole(trio: list[Replica], records: str) -> None:
    a, b = trio[0], trio[1]
    good = files.put_payload(
        new_doc_id(),
        "good.bin",
        size=3,
        mtime_ms=1,
        mime="application/octet-stream",
        content_hash=bytes(32),
        chunks=[(bytes(32), 3)],
        inline=[(0, b"abc")],
        base=[],
        text=False,
    )
    batch: list[Payload] = {
        "twice": [good, dict(good, path="other.bin")],
        "bad-record": [good, dict(good, path="../escape")],
        "empty": [],
        "not-a-file-record": [good, {"t": "blob.chunk", "id": bytes(32), "data": b"x"}],
    }[records]
    a.engine.append_record(files.batch_payload(batch))
    exchange(a, b)
    for replica in (a, b):
        row = replica.store.query_one("SELECT note FROM event_index WHERE type = 'file.batch'")
        assert row is not None and row[0], "the batch is noted as not applied"
        assert replica.store.query_one("SELECT count(*) FROM file_versions") == (0,)
        assert replica.store.query_one("SELECT count(*) FROM chunks") == (0,)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 700, 5000, 70_000, 300_000]), min_size=1, max_size=14),
    limit=st.integers(min_value=1, max_value=5),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_batches_of_any_bound_make_the_same_files_as_one_event_each(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], limit: int, seed: int
) -> None:
    """Whatever the batch bound (records, or bytes for the big inline chunks), duplicates and
    edits included, the files B ends with are those of a source that wrote every record as
    its own event."""
    tmp = tmp_path_factory.mktemp("batches")
    rng = random.Random(seed)
    contents = [rng.randbytes(size) for size in sizes]
    contents += [contents[rng.randrange(len(contents))]]  # one duplicate
    outcomes = []
    for run, bound in enumerate((limit, 1)):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(files, "BATCH_MAX_RECORDS", bound)
            a = init_vault(Home(tmp / f"a{run}"), "a")
            b = add_replica(a, tmp / f"b{run}", "b")
            src, _ = folder(a, tmp / f"src{run}")
            for i, blob in enumerate(contents):
                (src.root / f"f{i}.bin").write_bytes(blob)
            src.scan()
            for i in range(0, len(contents), 2):
                (src.root / f"f{i}.bin").write_bytes(contents[i] + b"!")
            (src.root / "f1.bin").unlink(missing_ok=True)
            src.scan()
            exchange(a, b)
            seen = {
                path: (deleted, size, versions, conflict)
                for path, (deleted, _, size, versions, conflict) in listing(b).items()
            }
            data = {e.path: current(b, e.path) for e in files.file_entries(b.store)}
            assert max(batch_events(a), default=1) <= bound
            outcomes.append((seen, data))
            a.close()
            b.close()
    assert outcomes[0] == outcomes[1]


def test_the_one_version_per_event_numbering_migrates_in_place(
    trio: list[Replica], tmp_path: Path
) -> None:
    """A vault of before ``file.batch`` (versions numbered by their event's rowid, bases by
    event id) gets the new numbers and columns, and its tables are what a rebuild makes."""
    a = trio[0]
    src, _ = folder(a, tmp_path / "src")
    for i in range(3):
        (src.root / f"f{i}.bin").write_bytes(noise(20_000 + i, i))
    for i in range(3):  # one event a file, as the old code wrote them
        with open(src.root / f"f{i}.bin", "rb") as stream:
            src.writer.put(f"f{i}.bin", stream, mtime_ms=1)
    (src.root / "f0.bin").write_bytes(b"changed")
    with open(src.root / "f0.bin", "rb") as stream:
        src.writer.put("f0.bin", stream, mtime_ms=2, edited=None)
    before = listing(a)
    conn = a.store.conn
    conn.executescript(
        "BEGIN;"
        "UPDATE file_versions SET rowid = -(rowid >> 12);"
        "UPDATE file_versions SET rowid = -rowid;"
        "ALTER TABLE file_versions RENAME COLUMN version_id TO event_id;"
        "UPDATE file_bases SET version = -(version >> 12);"
        "UPDATE file_bases SET version = -version;"
        "UPDATE files SET version = version >> 12;"
        "UPDATE chunks SET place = place >> 12;"
        "ALTER TABLE chunks RENAME COLUMN place TO rowid;"
        "DELETE FROM schema_migrations WHERE component = 'engine' AND version = 4;"
        "COMMIT;"
    )
    old = sqlite3.connect(a.store.path)
    assert old.execute("SELECT max(rowid) FROM file_versions").fetchone()[0] < 1 << 12
    old.close()
    migrate(conn, "engine", "engine.migrations")
    assert listing(a) == before
    assert current(a, "f0.bin") == b"changed"
    assert current(a, "f2.bin") == noise(20_002, 2)
    assert deep_verify(a) == []


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=st.randoms(use_true_random=False))
def test_files_converge_whatever_order_two_authors_events_arrive_in(
    tmp_path_factory: pytest.TempPathFactory, order: random.Random
) -> None:
    """Versions (batched or not), edits on both sides, a conflict and a deletion: a third
    replica that gets the two authors' events interleaved in any order holds the same files
    as each author, and what a rebuild of its log makes (``deep_verify``)."""
    tmp = tmp_path_factory.mktemp("order")
    a = init_vault(Home(tmp / "a"), "a")
    b, c = add_replica(a, tmp / "b", "b"), add_replica(a, tmp / "c", "c")
    exchange(a, b, c)  # everyone knows everyone before the files
    known = {bytes(raw) for raw in all_raw(a)}
    fa, _ = folder(a, tmp / "fa")
    fc, _ = folder(c, tmp / "fc")
    for i in range(6):
        (fa.root / f"f{i}.bin").write_bytes(noise(200, i))
    fa.scan()  # one batch
    exchange(a, c)
    (fc.root / "c0.bin").write_bytes(noise(300, 50))
    fc.scan()  # a lone file.put of C's
    for i in (0, 1):  # the same two files changed on A and on C: conflicts
        for replica, seed in ((a, 60), (c, 70)):
            entry = files.entry_at_path(replica.store, f"f{i}.bin")
            assert entry is not None
            FileWriter(replica.engine).put(
                f"f{i}.bin", io.BytesIO(noise(100, seed + i)), mtime_ms=5, doc_id=entry.doc_id
            )
    gone = files.entry_at_path(a.store, "f5.bin")
    assert gone is not None
    FileWriter(a.engine).delete(gone.doc_id)
    chains = [
        [raw for raw in all_raw(replica) if bytes(raw) not in known and author(raw) == me]
        for replica, me in ((a, a.engine.me), (c, c.engine.me))
    ]
    while any(chains):
        chain = order.choice([chain for chain in chains if chain])
        b.engine.accept_remote(chain.pop(0))
    exchange(a, c)
    assert listing(b) == listing(a) == listing(c)
    assert any(conflict for *_, conflict in listing(b).values())
    assert deep_verify(b) == []
    for replica in (a, b, c):
        replica.close()
