"""``verify --deep``: derived state rebuilt from the log and compared with the live state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from replicas.deep_verify import deep_verify
from replicas.folders import Folder
from replicas.processing import open_derived
from replicas.vault import Replica
from tests.conftest import all_raw

SHOAL = str(Path(sys.executable).parent / "shoal")


def populated(trio: list[Replica], tmp_path: Path) -> tuple[Replica, bytes]:
    """A replica holding documents of two authors, snapshots and files."""
    a, b, _ = trio
    doc = a.engine.create_doc("Shared", "first line\n", ["work"])
    a.engine.flush()
    for raw in all_raw(a):
        b.engine.accept_remote(raw)
    for i in range(70):  # past SNAPSHOT_EVERY: the document is read back from a snapshot
        b.engine.append_text(doc, f"line {i}\n")
        b.engine.flush()
    for raw in all_raw(b):
        a.engine.accept_remote(raw)
    root = tmp_path / "src"
    root.mkdir()
    (root / "note.md").write_text("# Note\n\nhello\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 40)
    Folder(a, root).scan()
    return a, doc


def test_a_healthy_replica_has_no_differences(trio: list[Replica], tmp_path: Path) -> None:
    a, _ = populated(trio, tmp_path)
    assert a.store.query_one("SELECT count(*) FROM snapshots")[0] >= 1  # type: ignore[index]
    assert a.store.query_one("SELECT count(*) FROM files")[0] == 2  # type: ignore[index]
    assert deep_verify(a) == []
    assert deep_verify(trio[1]) == []


def test_tampered_derived_tables_are_reported(trio: list[Replica], tmp_path: Path) -> None:
    a, doc = populated(trio, tmp_path)
    conn = a.store.conn
    conn.execute("UPDATE docs SET title = 'forged' WHERE doc = ?", (doc,))
    conn.execute("UPDATE files SET path = 'elsewhere.md' WHERE path = 'note.md'")
    conn.execute("DELETE FROM replica_names WHERE author = ?", (a.engine.me,))
    open_derived(a)  # the processors' tables are compared too
    conn.execute("INSERT INTO proc_caps VALUES (?, 1, 1, '[\"ocr\"]')", (b"\x09" * 32,))
    lines = deep_verify(a)
    assert any(line.startswith(f"docs {doc.hex()[:24]}") and "title" in line for line in lines)
    assert any(line.startswith("files ") and "'elsewhere.md'" in line for line in lines)
    assert any(line.startswith("replica_names ") and "missing" in line for line in lines)
    assert any(line.startswith("proc_caps 0909") and "not in the log" in line for line in lines)
    assert len(lines) == 4, lines


def test_a_stale_snapshot_is_reported(trio: list[Replica], tmp_path: Path) -> None:
    a, doc = populated(trio, tmp_path)
    other = a.engine.create_doc("Other", "unrelated body\n")
    a.engine.flush()
    a.engine._live.clear()  # read from disk from here on, as a fresh process would
    state = a.store.query_one("SELECT state FROM snapshots WHERE doc = ?", (doc,))
    assert state is not None
    a.store.conn.execute(
        "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?)", (other, state[0], a.store.last_rowid())
    )
    assert deep_verify(a) == [
        f"document {other.hex()}: body differs from the log's",
        f"document {other.hex()}: title or tags differ from the log's",
    ]


def test_cli_verify_deep_exits_non_zero_with_one_line_per_difference(tmp_path: Path) -> None:
    home = tmp_path / "home"

    def shoal(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SHOAL, "--home", str(home), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert shoal("init", "--name", "h").returncode == 0
    made = shoal("new", "A title", "--text", "a body\n")
    assert made.returncode == 0
    clean = shoal("verify", "--deep")
    assert clean.returncode == 0 and "ok" in clean.stdout, clean.stderr
    import sqlite3

    with sqlite3.connect(home / "vault.db") as conn:
        conn.execute("UPDATE docs SET size = size + 7, tags = '[\"x\"]'")
    bad = shoal("verify", "--deep")
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("BAD derived: ") for line in lines), lines
    assert shoal("verify").returncode == 0  # the plain check reads only the log
