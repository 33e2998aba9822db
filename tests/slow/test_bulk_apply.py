"""A big pull is applied by a helper process beside the sync (``replicas.apply_helper``).

Real processes on one home: the sync and its helper, two helpers at once, a helper beside
local writes of another command. What must hold whatever the interleaving: every stored event
is applied exactly once (the documents, their update counts and the index equal a rebuild
from the log), and the watermark never passes an event nobody applied.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.engine import Engine
from eventlog.envelope import Kind
from replicas.apply_helper import START_AFTER_EVENTS
from replicas.home import Home
from replicas.vault import Replica, init_vault, opened
from tests.conftest import add_replica, all_raw
from tests.slow.conftest import Procs, count, heads, shoal, shoal_json

pytestmark = pytest.mark.slow

DOCS = 3


def db(home: Path) -> Path:
    return home / "vault.db"


def write_vault(a: Replica, notes: int, edits: int) -> list[str]:
    """``notes`` small data events, then ``DOCS`` documents with ``edits`` updates each (one
    event per edit), so that document updates arrive after a helper has started."""
    engine, log = a.engine, a.log
    epoch = engine.keyring.current_epoch
    for start in range(0, notes, 2000):
        with a.store.atomic():
            for i in range(start, min(notes, start + 2000)):
                log.append_local(
                    engine.signer, engine.keyring, Kind.DATA, epoch, {"t": "test.note", "i": i}
                )
    engine.catch_up()
    engine.max_edits = 1
    docs = [engine.create_doc(f"doc {d}") for d in range(DOCS)]
    for i in range(edits):
        for d, doc in enumerate(docs):
            engine.append_text(doc, f"<{d}:{i}>")
    engine.flush()
    return [doc.hex() for doc in docs]


def derived(home: Path) -> dict[str, Any]:
    """What a home derived from its log: document rows, index size, watermark."""
    conn = sqlite3.connect(f"file:{db(home)}?mode=ro", uri=True)
    try:
        docs = conn.execute("SELECT doc, title, size, events FROM docs ORDER BY doc").fetchall()
        indexed = conn.execute("SELECT count(*) FROM event_index").fetchone()[0]
        upto = conn.execute("SELECT value FROM engine_state WHERE key = 'applied_upto'").fetchone()[
            0
        ]
        stored = conn.execute("SELECT count(*), max(rowid) FROM events").fetchone()
    finally:
        conn.close()
    return {"docs": docs, "indexed": indexed, "upto": upto, "stored": list(stored)}


def rebuilt(home: Path, tmp: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The same, from a copy of the home whose derived state is rebuilt from its log."""
    copy = tmp / f"{home.name}-rebuilt"
    shutil.copytree(home, copy)
    with opened(Home(copy)) as replica:
        replica.engine.rebuild()
        bodies = {
            doc.hex(): str(replica.engine.open(doc).body)
            for (doc,) in replica.store.query_all("SELECT doc FROM docs")
        }
    return derived(copy), bodies


def assert_applied_once(home: Path, tmp: Path) -> None:
    live = derived(home)
    again, bodies = rebuilt(home, tmp)
    assert live["indexed"] == live["stored"][0], "an event was never applied"
    assert live["upto"] == live["stored"][1]
    assert live == again, "derived state differs from a rebuild: applied twice or missed"
    for doc, body in bodies.items():
        assert shoal(home, "cat", doc).stdout.rstrip("\n") == body.rstrip("\n")


def test_a_big_pull_is_applied_beside_the_sync(procs: Procs, tmp_path: Path) -> None:
    a = init_vault(Home(tmp_path / "a"), "a")
    add_replica(a, tmp_path / "b", "b").close()
    docs = write_vault(a, notes=START_AFTER_EVENTS + 2000, edits=150)
    a.close()
    server = procs.serve(tmp_path / "a")
    result = shoal_json(tmp_path / "b", "sync", server.url)
    assert heads(db(tmp_path / "b")) == heads(db(tmp_path / "a"))
    # The helper really took part, and every event is applied once either way.
    assert 0 < result["applied_by_helper"] <= result["stored"]
    assert_applied_once(tmp_path / "b", tmp_path)
    for doc in docs:
        assert shoal(tmp_path / "b", "cat", doc).stdout == shoal(tmp_path / "a", "cat", doc).stdout
    assert derived(tmp_path / "b")["docs"] == derived(tmp_path / "a")["docs"]


def test_a_small_pull_needs_no_helper(procs: Procs, tmp_path: Path) -> None:
    a = init_vault(Home(tmp_path / "a"), "a")
    add_replica(a, tmp_path / "b", "b").close()
    write_vault(a, notes=100, edits=10)
    a.close()
    server = procs.serve(tmp_path / "a")
    result = shoal_json(tmp_path / "b", "sync", server.url)
    assert result["stored"] > 0 and result["applied_by_helper"] == 0
    assert_applied_once(tmp_path / "b", tmp_path)


def test_concurrent_appliers_and_local_writes_apply_every_event_once(tmp_path: Path) -> None:
    """Two helpers on one home plus another command writing local edits to it: the edits'
    own transactions must apply the unapplied events before them (else the mark jumps past
    them), and the helpers must never apply an event twice."""
    a = init_vault(Home(tmp_path / "a"), "a")
    b = add_replica(a, tmp_path / "b", "b")
    docs = write_vault(a, notes=6000, edits=200)
    raws = all_raw(a)
    a.close()
    known = count(db(tmp_path / "b"))
    with b.store.atomic():  # stored, not applied: what a bulk sync leaves for its helper
        for start in range(0, len(raws), 1000):
            b.log.accept_batch(raws[start : start + 1000])
    assert count(db(tmp_path / "b")) > known + 6000
    b.close()
    logs = [tmp_path / f"helper-{i}.err" for i in range(2)]
    helpers = []
    for path in logs:
        with open(path, "wb") as err:
            helpers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "replicas.apply_helper", str(tmp_path / "b")],
                    stdin=subprocess.PIPE,
                    stderr=err,
                )
            )
    try:
        for i in range(6):
            shoal(tmp_path / "b", "append", docs[i % DOCS], f"[local {i}]")
    finally:
        for helper in helpers:
            assert helper.stdin is not None
            helper.stdin.close()
        codes = [helper.wait(timeout=120) for helper in helpers]
    assert codes == [0, 0], [path.read_text() for path in logs]
    assert_applied_once(tmp_path / "b", tmp_path)
    for i in range(6):
        assert f"[local {i}]" in shoal(tmp_path / "b", "cat", docs[i % DOCS]).stdout


def stored_unapplied(tmp_path: Path, notes: int, edits: int) -> Replica:
    """Home B holding all of a fresh A's events, stored without being applied (what a bulk
    sync leaves for its helper); what B held already is a duplicate, a no-op."""
    a = init_vault(Home(tmp_path / "a"), "a")
    b = add_replica(a, tmp_path / "b", "b")
    write_vault(a, notes=notes, edits=edits)
    raws = all_raw(a)
    a.close()
    with b.store.atomic():
        b.log.accept_batch(raws)
    return b


def test_the_helper_is_only_an_accelerator(tmp_path: Path) -> None:
    """Events stored and left unapplied (a sync and its helper both killed) are applied by
    the next process that opens the home."""
    stored_unapplied(tmp_path, notes=500, edits=20).close()
    assert derived(tmp_path / "b")["indexed"] < count(db(tmp_path / "b"))
    assert shoal_json(tmp_path / "b", "status")["events"] == count(db(tmp_path / "b"))
    assert_applied_once(tmp_path / "b", tmp_path)


def test_settle_applies_what_the_helper_left(tmp_path: Path) -> None:
    b = stored_unapplied(tmp_path, notes=300, edits=10)
    engine: Engine = b.engine
    assert engine.applied_upto() < b.store.last_rowid()
    assert engine.settle(roster_changed=False, revoked_changed=False) > 0
    assert engine.applied_upto() == b.store.last_rowid()
    b.close()
    assert_applied_once(tmp_path / "b", tmp_path)
