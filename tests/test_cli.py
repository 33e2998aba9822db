"""The CLI as a user meets it: real `shoal` processes on real homes."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SHOAL = str(Path(sys.executable).parent / "shoal")


def run(home: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [SHOAL, "--home", str(home), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def run_json(home: Path, *args: str) -> Any:
    return json.loads(run(home, *args, "--json").stdout)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    assert proc.returncode != 0
    if code is not None:
        assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("shoal: error: ")
    assert "Traceback" not in proc.stderr
    return lines[0]


def events_table(home: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(home / "vault.db") as conn:
        return conn.execute("SELECT * FROM events ORDER BY rowid").fetchall()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    run(path, "init", "--name", "laptop")
    return path


def test_session(home: Path) -> None:
    doc = run_json(home, "new", "Groceries", "--text", "milk\n")["doc"]
    run(home, "append", doc[:8], "eggs\n")
    run(home, "set-title", doc, "Shopping")
    run(home, "tag", doc, "home")
    docs = run_json(home, "docs")
    assert [(d["doc"], d["title"], d["tags"], d["size"]) for d in docs] == [
        (doc, "Shopping", ["home"], 10)
    ]
    assert run(home, "cat", doc).stdout == "milk\neggs\n"
    history = run_json(home, "history", doc)
    assert len(history) == 4 and all(h["type"] == "doc.update" for h in history)
    assert [h["lamport"] for h in history] == sorted((h["lamport"] for h in history), reverse=True)
    first = history[-1]["id"]
    assert run_json(home, "cat", doc, "--at", first[:10])["body"] == "milk\n"
    log = run_json(home, "log")
    assert [e["type"] for e in log][-4:] == [
        "member.add",
        "replica.profile",
        "member.add",
        "vault.genesis",
    ]
    assert run_json(home, "log", "--doc", doc, "--limit", "2") == history[:2]
    assert len(run_json(home, "log", "--type", "member.add")) == 2  # owner, recovery key
    assert len(run_json(home, "log", "--since", "1h")) == 8
    assert run_json(home, "log", "--since", "2999-01-01") == []
    me = run_json(home, "status")["replica"]
    assert len(run_json(home, "log", "--author", me[:6])) == 8
    shown = run_json(home, "show", first)
    assert shown["signature"] == "valid" and shown["payload"]["t"] == "doc.update"
    status = run_json(home, "status")
    assert status["events"] == 8 and status["documents"] == 1 and status["name"] == "laptop"
    assert status["version_vector"][me]["seq"] == 8
    verified = run_json(home, "verify")
    assert verified == {"ok": True, "events": 8, "problems": []}
    # Human output works too.
    assert "Shopping" in run(home, "docs").stdout
    assert "verified 8 events: ok" in run(home, "verify").stdout


def test_secrets_are_private(home: Path) -> None:
    for path in (home / "identity").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((home / "identity").stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "vault.db").stat().st_mode) == 0o600


def test_init_refuses_an_existing_vault(home: Path) -> None:
    before = events_table(home)
    line = one_line_error(run(home, "init", ok=False), 2)
    assert "already holds a vault" in line
    assert events_table(home) == before


def test_commands_without_a_vault(tmp_path: Path) -> None:
    for args in (["status"], ["docs"], ["log"], ["verify"], ["cat", "ab"]):
        line = one_line_error(run(tmp_path / "empty", *args, ok=False), 2)
        assert "no vault" in line
    assert not (tmp_path / "empty").exists()


def test_home_from_environment(tmp_path: Path) -> None:
    env = {**os.environ, "SHOAL_HOME": str(tmp_path / "envhome")}
    subprocess.run([SHOAL, "init"], env=env, check=True, capture_output=True)
    assert (tmp_path / "envhome" / "vault.db").exists()


def test_unknown_and_ambiguous_ids(home: Path) -> None:
    docs = {run_json(home, "new", f"d{i}")["doc"] for i in range(17)}
    before = events_table(home)
    assert "not a hex id" in one_line_error(run(home, "cat", "zz", ok=False), 2)
    assert "no document" in one_line_error(run(home, "append", "0" * 32, "x", ok=False), 2)
    # 17 random ids over 16 first hex digits: some first digit is shared.
    first = [d[0] for d in docs]
    shared = next(c for c in first if first.count(c) > 1)
    assert "ambiguous" in one_line_error(run(home, "cat", shared, ok=False), 2)
    assert "no event" in one_line_error(run(home, "show", "f" * 64, ok=False), 2)
    assert "not a hex id" in one_line_error(run(home, "show", "", ok=False), 2)
    assert events_table(home) == before


def test_get_writes_into_a_directory_and_names_an_unwritable_target(
    home: Path, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("kept\n")
    run(home, "add", str(tmp_path / "notes.txt"))
    (tmp_path / "out").mkdir()
    run(home, "get", "notes.txt", "--out", str(tmp_path / "out"))  # as cp: keeps its name
    assert (tmp_path / "out" / "notes.txt").read_text() == "kept\n"
    missing = tmp_path / "no-such-dir" / "x.txt"
    line = one_line_error(run(home, "get", "notes.txt", "--out", str(missing), ok=False), 5)
    assert line == f"shoal: error: cannot write {missing}: No such file or directory"
    assert not [p for p in tmp_path.rglob(".shoal-tmp-*")]


def test_bad_arguments(home: Path) -> None:
    proc = run(home, "log", "--since", "yesterday-ish", ok=False)
    assert proc.returncode == 2 and "not a time" in proc.stderr


def test_corrupt_database(home: Path) -> None:
    db = home / "vault.db"
    data = bytearray(db.read_bytes())
    data[:16] = b"not a database!!"
    db.write_bytes(bytes(data))
    for args in (["status"], ["verify"], ["docs"]):
        line = one_line_error(run(home, *args, ok=False), 5)
        assert "vault.db" in line or "database" in line
    assert db.read_bytes()[:16] == b"not a database!!"


def test_verify_names_a_flipped_event(home: Path) -> None:
    doc = run_json(home, "new", "Secret plans", "--text", "step one\n")["doc"]
    run(home, "append", doc, "step two\n")
    victim = run_json(home, "history", doc)[-1]["id"]
    with sqlite3.connect(home / "vault.db") as conn:
        (raw,) = conn.execute(
            "SELECT raw FROM events WHERE id = ?", (bytes.fromhex(victim),)
        ).fetchone()
        flipped = bytearray(raw)
        flipped[len(flipped) - 80] ^= 0x01  # a byte inside the sealed body
        conn.execute(
            "UPDATE events SET raw = ? WHERE id = ?", (bytes(flipped), bytes.fromhex(victim))
        )
    tampered = events_table(home)
    proc = run(home, "verify", ok=False)
    assert proc.returncode == 1
    assert victim in proc.stderr
    result = json.loads(run(home, "verify", "--json", ok=False).stdout)
    assert result["ok"] is False
    assert {p["event"] for p in result["problems"]} == {victim}
    # Reading the tampered event is one clear line, and nothing stored changed.
    line = one_line_error(run(home, "cat", doc, "--at", victim, ok=False))
    assert "does not" in line
    assert events_table(home) == tampered
