"""Files in one process: real folders, real SQLite homes, replicas exchanging real events."""

from __future__ import annotations

import asyncio
import io
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import file_content, files
from engine.blobs import CHUNK_MAX, CHUNK_MIN, BlobKeys, cut
from engine.documents import text_edits
from engine.ingest import RUN_BYTES, FileWriter
from eventlog.errors import NotFoundError, ShoalError
from replicas.filesout import content, resolve_file
from replicas.folders import MARKER, STREAM_BYTES, Folder, ScanResult
from replicas.inspect import status
from replicas.vault import Replica
from replicas.watching import open_folders, run_folders
from tests.conftest import all_raw
from tests.test_cli import run, run_json


def exchange(*replicas: Replica) -> None:
    """Every replica gets every other's events (as sync would deliver them)."""
    for source in replicas:
        raws = all_raw(source)
        for target in replicas:
            if target is not source:
                for raw in raws:
                    target.engine.accept_remote(raw)


def folder(replica: Replica, path: Path, *, mirror: bool = False) -> tuple[Folder, list[str]]:
    path.mkdir(parents=True, exist_ok=True)
    reports: list[str] = []
    return Folder(replica, path, mirror=mirror, report=reports.append), reports


def current(replica: Replica, path: str) -> bytes:
    return b"".join(content(replica, resolve_file(replica, path), None))


def noise(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def mirrors_sharing(
    a: Replica, b: Replica, tmp_path: Path, name: str, data: bytes
) -> tuple[Folder, Folder, list[str]]:
    """A's and B's mirrors, both holding ``name`` (synced); and B's report lines."""
    fa, _ = folder(a, tmp_path / "a-dir", mirror=True)
    fb, reports = folder(b, tmp_path / "b-dir", mirror=True)
    (fa.root / name).write_bytes(data)
    fa.scan()
    exchange(a, b)
    fb.scan()
    return fa, fb, reports


def conflict_versions(replica: Replica, path: str) -> set[bytes]:
    """The content of every version of the file at ``path``, which must be in conflict."""
    entry = files.entry_at_path(replica.store, path)
    assert entry is not None and entry.conflict
    return {
        b"".join(file_content.iter_content(replica.engine, v))
        for v in files.versions(replica.store, entry.doc_id)
    }


def test_add_list_get_byte_exact_and_dedup(trio: list[Replica], tmp_path: Path) -> None:
    a = trio[0]
    src, _ = folder(a, tmp_path / "src")
    big = noise(3 * CHUNK_MAX + 12345, 1)
    (src.root / "sub").mkdir()
    (src.root / "sub" / "big.bin").write_bytes(big)
    (src.root / "copy.bin").write_bytes(big)
    (src.root / "note.md").write_text("# Title\n\nhello\n")
    result = src.scan()
    assert (result.added, result.problems) == (3, [])
    assert result.new_bytes == len(big) + len("# Title\n\nhello\n")  # the copy cost nothing
    listing = {e.path: e for e in files.file_entries(a.store)}
    assert set(listing) == {"sub/big.bin", "copy.bin", "note.md"}
    assert listing["copy.bin"].hash == listing["sub/big.bin"].hash
    assert listing["note.md"].text and not listing["copy.bin"].text
    assert listing["note.md"].mime == "text/markdown"
    stored = a.store.query_one("SELECT count(*), sum(size) FROM chunks")
    assert stored is not None and stored[1] == len(big) + 15
    assert current(a, "sub/big.bin") == big
    b = trio[1]
    exchange(a, b)
    assert current(b, "copy.bin") == big
    assert current(b, "note.md") == b"# Title\n\nhello\n"


def test_a_big_files_chunks_commit_as_they_are_cut(trio: list[Replica], tmp_path: Path) -> None:
    """A file of STREAM_BYTES or more is not held in its batch's transaction: its chunks
    commit in runs of about RUN_BYTES as they are cut, so a daemon on the home can send them
    while the rest is read; small files still share one commit."""
    a = trio[0]
    src, _ = folder(a, tmp_path / "src")
    big = noise(STREAM_BYTES + CHUNK_MAX, 7)
    (src.root / "big.bin").write_bytes(big)
    for i in range(3):
        (src.root / f"small{i}.bin").write_bytes(noise(1000, i))
    commits: list[tuple[int, int]] = []

    def counted() -> None:  # chunk events and file versions, as each commit leaves them
        chunk_events = a.store.query_one(
            "SELECT count(*) FROM event_index WHERE type = 'blob.chunk'"
        )
        versions = a.store.query_one("SELECT count(*) FROM file_versions")
        assert chunk_events is not None and versions is not None
        commits.append((int(chunk_events[0]), int(versions[0])))

    a.store.pre_commit_hooks.append(counted)
    result = src.scan()
    a.store.pre_commit_hooks.remove(counted)
    assert (result.added, result.problems) == (4, [])
    chunks = a.store.query_one("SELECT count(*) FROM event_index WHERE type = 'blob.chunk'")
    assert chunks is not None and chunks[0] >= 2
    before = [(0, 0), *commits[:-1]]
    steps = [(c - c0, p - p0) for (c0, p0), (c, p) in zip(before, commits, strict=True)]
    runs = [c for c, p in steps if c]
    assert all(p == 0 for c, p in steps if c), steps  # chunks commit before their version
    assert len(runs) >= 2 and sum(runs) == chunks[0], steps  # in several runs
    assert max(runs) * CHUNK_MIN <= RUN_BYTES + CHUNK_MAX, steps  # of about RUN_BYTES
    assert (0, 3) in steps, steps  # the three small files: one commit
    assert current(a, "big.bin") == big


def test_versions_tombstones_renames_and_get_at(trio: list[Replica], tmp_path: Path) -> None:
    a = trio[0]
    src, _ = folder(a, tmp_path / "src")
    one, two = noise(5000, 2), noise(7000, 3)
    (src.root / "f.bin").write_bytes(one)
    src.scan()
    first = files.entry_at_path(a.store, "f.bin")
    assert first is not None
    (src.root / "f.bin").write_bytes(two)
    os.utime(src.root / "f.bin", ns=(1, 10**18))  # a different mtime, whatever the clock says
    assert src.scan().changed == 1
    (src.root / "f.bin").rename(src.root / "g.bin")
    result = src.scan()
    assert (result.renamed, result.deleted, result.added) == (1, 0, 0)
    entry = files.entry_at_path(a.store, "g.bin")
    assert entry is not None and entry.doc_id == first.doc_id and entry.versions == 3
    (src.root / "g.bin").unlink()
    assert src.scan().deleted == 1
    assert files.entry_at_path(a.store, "g.bin") is None
    gone = files.file_entry(a.store, first.doc_id)
    assert gone is not None and gone.deleted
    first_event = a.store.event_by_rowid(files.event_rowid(first.rowid))
    assert first_event is not None
    old = b"".join(content(a, first.doc_id, first_event.id.hex()[:16]))
    assert old == one  # the tombstoned file's first version is still there, byte-exact
    with pytest.raises(NotFoundError):
        b"".join(content(a, first.doc_id, None))


def test_concurrent_text_edits_merge_through_mirrors(trio: list[Replica], tmp_path: Path) -> None:
    a, b = trio[0], trio[1]
    fa, _ = folder(a, tmp_path / "a-dir", mirror=True)
    fb, _ = folder(b, tmp_path / "b-dir", mirror=True)
    (fa.root / "plan.txt").write_text("apples\nbananas\ncherries\n")
    fa.scan()
    exchange(a, b)
    fb.scan()
    assert (fb.root / "plan.txt").read_text() == "apples\nbananas\ncherries\n"
    (fa.root / "plan.txt").write_text("apples\nbananas (ripe)\ncherries\n")
    (fb.root / "plan.txt").write_text("apples\nbananas\ncherries\ndates\n")
    fa.scan()
    fb.scan()
    exchange(a, b)
    fa.scan()
    fb.scan()
    merged = "apples\nbananas (ripe)\ncherries\ndates\n"
    assert (fa.root / "plan.txt").read_text() == merged
    assert (fb.root / "plan.txt").read_text() == merged
    assert not list(fa.root.glob("*conflict*")) and not list(fb.root.glob("*conflict*"))
    # Writing the merge back is not a new edit: another round changes nothing.
    before = (len(all_raw(a)), len(all_raw(b)))
    fa.scan()
    fb.scan()
    exchange(a, b)
    assert (len(all_raw(a)), len(all_raw(b))) == before


def test_binary_conflict_has_one_winner_everywhere(trio: list[Replica], tmp_path: Path) -> None:
    a, b = trio[0], trio[1]
    fa, fb, _ = mirrors_sharing(a, b, tmp_path, "photo.jpg", b"\xff\xd8" + noise(4000, 4))
    mine, theirs = b"\xff\xd8" + noise(4000, 5), b"\xff\xd8" + noise(4000, 6)
    (fa.root / "photo.jpg").write_bytes(mine)
    (fb.root / "photo.jpg").write_bytes(theirs)
    fa.scan()
    fb.scan()
    exchange(a, b)
    fa.scan()
    fb.scan()
    on_a, on_b = (fa.root / "photo.jpg").read_bytes(), (fb.root / "photo.jpg").read_bytes()
    assert on_a == on_b and on_a in (mine, theirs)
    for replica in (a, b):
        assert [c.path for c in files.conflicts(replica.store)] == ["photo.jpg"]
        assert status(replica)["conflicts"] == ["photo.jpg"]  # what `shoal status` prints
        assert {mine, theirs} <= conflict_versions(replica, "photo.jpg")  # loser in history
    assert not [p for p in fa.root.iterdir() if p.name not in ("photo.jpg", MARKER)]


def test_an_edit_made_before_a_newer_version_arrived_is_a_conflict_not_an_overwrite(
    trio: list[Replica], tmp_path: Path
) -> None:
    """B's file is changed while shoal is stopped; A's newer version reaches B's vault (sync
    got in first) before B's folder is scanned. B's change was made to v1, so it must stand
    beside A's v2 as a conflict, not bury it; a deletion made to v1 loses to v2."""
    a, b = trio[0], trio[1]
    fa, _ = folder(a, tmp_path / "a-dir", mirror=True)
    fb, _ = folder(b, tmp_path / "b-dir", mirror=True)
    for name in ("photo.bin", "gone.bin"):
        (fa.root / name).write_bytes(b"\x00v1" + noise(3000, len(name)))
    (fa.root / "notes.txt").write_text("one\ntwo\n")  # text merges instead
    fa.scan()
    exchange(a, b)
    fb.scan()
    theirs = {}
    for name in ("photo.bin", "gone.bin"):
        theirs[name] = b"\x00v2 from a" + noise(3000, 10 + len(name))
        (fa.root / name).write_bytes(theirs[name])
    fa.scan()
    (fa.root / "notes.txt").write_text("one (a)\ntwo\n")
    fa.scan()
    mine = b"\x00edited on b" + noise(3000, 20)
    (fb.root / "photo.bin").write_bytes(mine)
    (fb.root / "gone.bin").unlink()
    (fb.root / "notes.txt").write_text("one\ntwo (b)\n")
    exchange(a, b)  # A's v2 arrives first ...
    fb.scan()  # ... then B's folder is reconciled
    exchange(a, b)
    fa.scan()
    fb.scan()
    for replica in (a, b):
        assert {mine, theirs["photo.bin"]} <= conflict_versions(replica, "photo.bin")
        gone = files.entry_at_path(replica.store, "gone.bin")  # a live version beats a delete
        assert gone is not None and not gone.deleted
        notes = files.entry_at_path(replica.store, "notes.txt")
        assert notes is not None and not notes.conflict
        assert current(replica, "notes.txt") == b"one (a)\ntwo (b)\n"
    assert (fa.root / "photo.bin").read_bytes() == (fb.root / "photo.bin").read_bytes()
    assert (fb.root / "gone.bin").read_bytes() == theirs["gone.bin"]


def test_a_file_already_in_a_new_mirror_stands_beside_the_vaults_version(
    trio: list[Replica], tmp_path: Path
) -> None:
    """B's folder already holds a different ``x.bin`` (restored from an old backup, say)
    when it starts mirroring a vault that has one: it was made to none of the vault's
    versions, so both are kept as a conflict, not the vault's buried under it."""
    a, b = trio[0], trio[1]
    fa, _ = folder(a, tmp_path / "a-dir", mirror=True)
    theirs, mine = b"\x00in the vault" + noise(3000, 1), b"\x00already on b" + noise(3000, 2)
    (fa.root / "x.bin").write_bytes(theirs)
    fa.scan()
    exchange(a, b)
    (tmp_path / "b-dir").mkdir()
    (tmp_path / "b-dir" / "x.bin").write_bytes(mine)
    fb, _ = folder(b, tmp_path / "b-dir", mirror=True)
    fb.scan()
    exchange(a, b)
    fa.scan()
    for replica in (a, b):
        assert conflict_versions(replica, "x.bin") == {theirs, mine}
    assert (fa.root / "x.bin").read_bytes() == (fb.root / "x.bin").read_bytes()


def test_the_same_new_path_made_on_two_replicas_is_one_winner_and_reported(
    trio: list[Replica], tmp_path: Path
) -> None:
    """Two replicas each make ``same.bin`` before hearing of the other's: two documents
    claim one path. Every folder must hold the same one, the other must stay whole in the
    vault, and ``shoal status`` must say so."""
    a, b = trio[0], trio[1]
    fa, _ = folder(a, tmp_path / "a-dir", mirror=True)
    fb, _ = folder(b, tmp_path / "b-dir", mirror=True)
    made = {fa: b"\x00from a" + noise(2000, 1), fb: b"\x00from b" + noise(2000, 2)}
    for side, data in made.items():
        (side.root / "same.bin").write_bytes(data)
        side.scan()
    exchange(a, b)
    fa.scan()
    fb.scan()
    assert (fa.root / "same.bin").read_bytes() == (fb.root / "same.bin").read_bytes()
    assert (fa.root / "same.bin").read_bytes() in made.values()
    for replica in (a, b):
        assert status(replica)["clashes"] == ["same.bin"]
        claims = [e for e in files.file_entries(replica.store) if e.path == "same.bin"]
        kept = {b"".join(content(replica, e.doc_id, None)) for e in claims}
        assert kept == set(made.values())  # the other is still there, by its document id
    assert not [
        p for p in fa.root.iterdir() if p.name not in ("same.bin", MARKER)
    ]  # no conflict copies
    home = tmp_path / "b"  # and what a user of B reads (real `shoal` processes)
    assert "clash      same.bin: made on several replicas" in run(home, "status").stdout
    listed = [f for f in run_json(home, "files") if f["path"] == "same.bin"]
    assert len(listed) == 2 and all(f["clash"] for f in listed)
    assert "clash" in run(home, "files").stdout


def test_mirror_materializes_and_follows_deletes(trio: list[Replica], tmp_path: Path) -> None:
    a, b = trio[0], trio[1]
    src, _ = folder(a, tmp_path / "src")
    dst, _ = folder(b, tmp_path / "dst", mirror=True)
    (src.root / "deep" / "er").mkdir(parents=True)
    (src.root / "deep" / "er" / "x.bin").write_bytes(noise(CHUNK_MIN * 3, 7))
    (src.root / "y.txt").write_text("why\n")
    src.scan()
    exchange(a, b)
    assert dst.scan().written == 2
    assert (dst.root / "deep" / "er" / "x.bin").read_bytes() == noise(CHUNK_MIN * 3, 7)
    (src.root / "y.txt").unlink()
    src.scan()
    exchange(a, b)
    dst.materialize(None)
    assert not (dst.root / "y.txt").exists()
    assert not [p for p in dst.root.rglob("*") if p.name.startswith(".shoal-tmp")]
    # A directory renamed, and one emptied, on A leave no empty directory behind on B; one
    # that still holds a file of B's own stays.
    (src.root / "keep").mkdir()
    (src.root / "keep" / "k.txt").write_text("k\n")
    src.scan()
    exchange(a, b)
    dst.scan()
    (dst.root / "keep" / "mine.txt").write_text("b's own\n")
    dst.scan()
    exchange(a, b)
    src.scan()
    (src.root / "deep").rename(src.root / "moved")
    (src.root / "keep" / "k.txt").unlink()
    src.scan()
    exchange(a, b)
    dst.materialize(None)
    assert (dst.root / "moved" / "er" / "x.bin").read_bytes() == noise(CHUNK_MIN * 3, 7)
    assert not (dst.root / "deep").exists()
    assert sorted(p.name for p in (dst.root / "keep").iterdir()) == ["mine.txt"]


def test_the_mirror_never_writes_through_a_directory_linked_out_of_its_folder(
    trio: list[Replica], tmp_path: Path
) -> None:
    """A directory in the mirror that is a symlink out of it (made by someone on B) does not
    carry vault files out of the folder: they are reported, not written, and the rest is."""
    a, b = trio[0], trio[1]
    src, _ = folder(a, tmp_path / "src")
    dst, reports = folder(b, tmp_path / "dst", mirror=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (dst.root / "linked").symlink_to(outside, target_is_directory=True)
    for name in ("linked/a.bin", "linked/deeper/b.bin", "plain/c.bin"):
        (src.root / name).parent.mkdir(parents=True, exist_ok=True)
        (src.root / name).write_bytes(noise(3000, len(name)))
    src.scan()
    exchange(a, b)
    assert dst.materialize(None) == 1
    assert list(outside.rglob("*")) == []
    assert (dst.root / "plain" / "c.bin").read_bytes() == noise(3000, len("plain/c.bin"))
    refused = sorted(r for r in reports if "link out of the folder" in r)
    assert refused == [
        "not written linked/a.bin: a directory on its way is a link out of the folder",
        "not written linked/deeper/b.bin: a directory on its way is a link out of the folder",
    ]


def test_a_mirror_update_keeps_the_files_permissions(trio: list[Replica], tmp_path: Path) -> None:
    """A new version written over a file keeps that file's mode: a private file must not
    become readable by others because an edit arrived (nor while it is being written)."""
    a, b = trio[0], trio[1]
    fa, _ = folder(a, tmp_path / "a-dir", mirror=True)
    fb, _ = folder(b, tmp_path / "b-dir", mirror=True)
    for name in ("secret.txt", "run.sh", "photo.bin"):
        (fa.root / name).write_bytes(b"\x00v1 " + name.encode())
    fa.scan()
    exchange(a, b)
    fb.scan()
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat_mode(fb.root / "photo.bin") == 0o666 & ~umask  # a new file: the defaults
    (fb.root / "secret.txt").chmod(0o600)
    (fb.root / "run.sh").chmod(0o4750)  # setuid: the bit new content must not inherit
    fb.scan()  # a mode change alone is not a new version
    for name in ("secret.txt", "run.sh"):
        (fa.root / name).write_bytes(b"\x00v2 " + name.encode())
    fa.scan()
    exchange(a, b)
    fb.scan()
    assert (fb.root / "secret.txt").read_bytes() == b"\x00v2 secret.txt"
    assert stat_mode(fb.root / "secret.txt") == 0o600
    assert stat_mode(fb.root / "run.sh") == 0o750


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_the_echo_of_a_mirror_write_is_dropped_but_an_edit_after_it_is_not(
    trio: list[Replica], tmp_path: Path
) -> None:
    a, b = trio[0], trio[1]
    src, _ = folder(a, tmp_path / "src")
    dst, _ = folder(b, tmp_path / "dst", mirror=True)
    (src.root / "p.bin").write_bytes(noise(5000, 3))
    (src.root / "q.bin").write_bytes(noise(5000, 4))
    src.scan()
    exchange(a, b)
    assert dst.scan().written == 2
    p, q = dst.root / "p.bin", dst.root / "q.bin"
    q.write_bytes(noise(6000, 5))  # edited on B right after the mirror wrote it
    result = dst.changed_paths([("added", p), ("added", q)])  # the watcher's batch
    assert (result.changed, result.unchanged) == (1, 0)  # p: an echo, not even looked up
    assert current(b, "q.bin") == noise(6000, 5)
    assert current(b, "p.bin") == noise(5000, 3)
    assert dst.changed_paths([("modified", p)]).unchanged == 1  # later events are checked


def test_a_directory_the_mirror_made_is_not_read_again_but_an_edit_in_it_is(
    trio: list[Replica], tmp_path: Path
) -> None:
    """The watcher reports a new directory, which is walked (files written right after a
    ``mkdir`` can precede its watch); the files the mirror itself wrote there are echoes."""
    a, b = trio[0], trio[1]
    src, _ = folder(a, tmp_path / "src")
    dst, _ = folder(b, tmp_path / "dst", mirror=True)
    (src.root / "sub").mkdir()
    for name in ("p.bin", "q.bin", "r.bin"):
        (src.root / "sub" / name).write_bytes(noise(3000, len(name)))
    src.scan()
    exchange(a, b)
    assert dst.scan().written == 3
    (dst.root / "sub" / "q.bin").write_bytes(noise(4000, 9))  # edited before the batch came
    result = dst.changed_paths([("added", dst.root / "sub")])
    assert (result.changed, result.unchanged, result.added) == (1, 0, 0)
    assert current(b, "sub/q.bin") == noise(4000, 9)
    assert current(b, "sub/p.bin") == noise(3000, 5)


def test_ignore_patterns_temp_files_and_symlinks(
    make_replica: Callable[[str], Replica], tmp_path: Path
) -> None:
    a = make_replica("a")
    src, reports = folder(a, tmp_path / "src")
    (src.root / ".shoalignore").write_text("*.log\nbuild/\n!keep.log\n")
    src, reports = folder(a, src.root)  # ignore rules are read when a folder is opened
    for name in ("a.log", "keep.log", "doc.txt", "doc.txt~", "x.part", ".#lock", "build/out.o"):
        (src.root / name).parent.mkdir(parents=True, exist_ok=True)
        (src.root / name).write_text(name)
    (src.root / "loop").symlink_to(src.root)
    src.scan()
    assert {e.path for e in files.file_entries(a.store)} == {"keep.log", "doc.txt", ".shoalignore"}
    assert any("symbolic link" in line for line in reports)


def test_a_mirror_leaves_its_ignored_paths_alone(trio: list[Replica], tmp_path: Path) -> None:
    """Ignored paths sync in neither direction (as in Syncthing): a mirror neither writes
    the vault's file at a path it ignores nor touches its own local-only file there."""
    a, b = trio[0], trio[1]
    src, _ = folder(a, tmp_path / "src")
    for name in ("local.env", "build/out.o", "shared.txt"):
        (src.root / name).parent.mkdir(parents=True, exist_ok=True)
        (src.root / name).write_text(f"{name} from a\n")
    src.scan()
    exchange(a, b)
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / ".shoalignore").write_text("local.env\nbuild/\n")
    (tmp_path / "dst" / "local.env").write_text("b's own, never synced\n")
    dst, reports = folder(b, tmp_path / "dst", mirror=True)
    dst.scan()
    assert (dst.root / "shared.txt").read_text() == "shared.txt from a\n"
    assert (dst.root / "local.env").read_text() == "b's own, never synced\n"
    assert not (dst.root / "build").exists()
    assert not [line for line in reports if "local.env" in line or "build" in line]


def test_unsafe_remote_paths_are_refused(
    make_replica: Callable[[str], Replica], tmp_path: Path
) -> None:
    for bad in ("../escape", "/etc/passwd", "a/../../b", "a//b", "a\\b", "", "./a", "x\x00y"):
        with pytest.raises(files.UnsafePathError):
            files.check_path(bad)
    a = make_replica("a")
    dst, reports = folder(a, tmp_path / "dst", mirror=True)
    assert dst.local_path("ok/" + "n" * 300) is None
    assert any("longer than this system allows" in line for line in reports)


def test_file_vanishing_or_unreadable_is_one_line_and_others_survive(
    make_replica: Callable[[str], Replica],
    tmp_path: Path,
) -> None:
    a = make_replica("a")
    src, _ = folder(a, tmp_path / "src")
    (src.root / "fine.txt").write_text("fine\n")
    os.mkfifo(src.root / "pipe")  # not a regular file: never opened (it would block)
    result = ScanResult()
    assert src.ingest(src.root / "missing.txt", result) is None
    src.scan()
    assert {e.path for e in files.file_entries(a.store)} == {"fine.txt"}


class _Disk:
    """What the operating system does to a file while shoal reads it: ``open`` behaves as
    the real one, except on the named path, where it refuses (``denied``), or opens the
    real file and then lets another writer delete it (``vanishes``) or append ``more`` to
    it once the first bytes were read (``grows``). Needed because tests run as root, for
    whom no permission bit refuses, and because a real concurrent writer would be a race."""

    def __init__(self, path: Path, what: str, more: bytes = b"more") -> None:
        self.path, self.what, self.more = path, what, more
        self.real = open  # the builtin, kept before it is patched

    def __call__(self, file, mode="r", *args, **kwargs):
        if Path(file) != self.path:
            return self.real(file, mode, *args, **kwargs)
        if self.what == "denied":
            raise PermissionError(13, "Permission denied", str(file))
        stream = self.real(file, mode, *args, **kwargs)
        if self.what == "vanishes":
            os.unlink(file)
            return stream
        disk = self

        class Appended(io.BufferedReader):
            def read(self, size: int | None = -1) -> bytes:
                data = super().read(size)
                with disk.real(file, "ab") as other:
                    other.write(disk.more)
                return data

        stream.close()
        return Appended(io.FileIO(file, "rb"))


@pytest.mark.parametrize(
    ("what", "line"),
    [
        ("denied", "Permission denied"),
        ("grows", "it changed while being read (next pass)"),
        ("vanishes", "it vanished while being read"),
    ],
)
def test_a_file_refused_changed_or_gone_mid_read_is_one_line_and_others_survive(
    make_replica: Callable[[str], Replica],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    what: str,
    line: str,
) -> None:
    a = make_replica("a")
    src, reports = folder(a, tmp_path / "src")
    for name in ("a.txt", "b.bin", "c.txt"):
        (src.root / name).write_bytes(name.encode() * 1000)
    bad = src.root / "b.bin"
    if what == "denied":
        bad.chmod(0)  # refused for real when the tests do not run as root
    monkeypatch.setattr("builtins.open", _Disk(bad, what))
    result = src.scan()
    monkeypatch.undo()
    assert {e.path for e in files.file_entries(a.store)} == {"a.txt", "c.txt"}
    assert [r for r in reports if "b.bin" in r] == [f"skipped {bad}: {line}"]
    assert result.problems == [f"skipped {bad}: {line}"]
    if what != "vanishes":  # the next pass, with the file readable and still, ingests it
        bad.chmod(0o644)
        src.scan()
        assert current(a, "b.bin") == bad.read_bytes()


@pytest.mark.parametrize("what", ["denied", "grows"])
def test_the_mirror_never_overwrites_a_local_edit_it_could_not_read(
    trio: list[Replica], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """Before writing a new version, the mirror ingests a local edit (merge, never clobber);
    when that edit cannot be read (refused, or still being written), the file must stay as
    the user left it until a later pass can read it."""
    a, b = trio[0], trio[1]
    fa, fb, reports = mirrors_sharing(a, b, tmp_path, "photo.bin", b"\x00v1" + noise(3000, 1))
    mine = b"\x00edited on b" + noise(3000, 2)
    (fb.root / "photo.bin").write_bytes(mine)  # not ingested yet (no watcher here)
    (fa.root / "photo.bin").write_bytes(b"\x00v2" + noise(3000, 3))
    fa.scan()
    exchange(a, b)
    monkeypatch.setattr("builtins.open", _Disk(fb.root / "photo.bin", what))
    fb.materialize(None)
    monkeypatch.undo()
    assert (fb.root / "photo.bin").read_bytes()[: len(mine)] == mine
    assert any("photo.bin" in line for line in reports)
    fb.scan()  # readable and still now: the edit is ingested, a conflict, and nothing lost
    exchange(a, b)
    fa.scan()
    fb.scan()
    kept = conflict_versions(b, "photo.bin")
    assert (fb.root / "photo.bin").read_bytes() in kept
    assert mine in kept or what == "grows"  # a grown file was ingested with its growth


def test_a_file_edited_during_the_startup_scan_is_not_missed(
    make_replica: Callable[[str], Replica], tmp_path: Path
) -> None:
    """Real watchfiles: while the startup scan of 2,000 files runs, another thread edits a
    file the scan has already read (one with a committed record). The watcher must have
    been watching since before the scan, so the edit reaches the vault."""
    a = make_replica("a")
    root = tmp_path / "src"
    root.mkdir()
    for i in range(2000):
        (root / f"f{i:04}.txt").write_text(f"file {i}\n")
    edited: list[str] = []

    def edit_during_the_scan() -> None:
        conn = sqlite3.connect(tmp_path / "a" / "vault.db", timeout=10)
        try:
            while time.monotonic() < deadline:
                (count,) = conn.execute("SELECT count(*) FROM folder_files").fetchone()
                if 100 <= count < 1900:
                    (path,) = conn.execute("SELECT path FROM folder_files LIMIT 1").fetchone()
                    (root / path).write_text("edited during the scan\n")
                    edited.append(path)
                    return
                time.sleep(0.002)
        finally:
            conn.close()

    async def follow() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_folders(a, folders, stop))
        while time.monotonic() < deadline and not (
            edited and current(a, edited[0]) == b"edited during the scan\n"
        ):
            await asyncio.sleep(0.05)
        stop.set()
        await task

    folders = open_folders(a, [root], [], print)  # makes the folder tables
    deadline = time.monotonic() + 30
    editor = threading.Thread(target=edit_during_the_scan)
    editor.start()
    asyncio.run(follow())
    editor.join()
    assert edited, "the scan was over before the edit could be made mid-scan"
    assert current(a, edited[0]) == b"edited during the scan\n"


def empty(root: Path) -> None:
    """Remove everything in ``root``, which stays: what an unmounted drive leaves behind."""
    for child in sorted(root.rglob("*"), reverse=True):
        if child.is_dir():
            child.rmdir()
        else:
            child.unlink()


@pytest.mark.parametrize("how", ["removed", "unmounted"])
def test_a_watched_folder_that_vanishes_deletes_nothing_and_stops_loudly(
    make_replica: Callable[[str], Replica], tmp_path: Path, how: str
) -> None:
    """The folder itself goes away (removed, or its drive unmounted: an empty mount point
    stays), every file with it: that must not turn every file into a tombstone (which every
    mirror would then delete). Real watchfiles: the watch goes silent after a removal, so
    following must fail loudly rather than go on blind."""
    a = make_replica("a")
    src, reports = folder(a, tmp_path / "src")
    for i in range(3):
        (src.root / f"f{i}.txt").write_text(f"file {i}\n")
    src.scan()

    async def follow() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_folders(a, [src], stop))
        await asyncio.sleep(0.5)
        empty(src.root)  # every file goes, and the marker with them
        if how == "removed":
            src.root.rmdir()
        try:
            await asyncio.wait_for(task, 10)
        finally:
            stop.set()

    with pytest.raises(ShoalError, match="the folder itself is gone"):
        asyncio.run(follow())
    assert [e.path for e in files.file_entries(a.store)] == ["f0.txt", "f1.txt", "f2.txt"]
    assert any("the folder itself is gone" in line for line in reports)


def test_a_text_file_appended_to_while_read_is_merged_once(
    make_replica: Callable[[str], Replica], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check that a file held still while it was read must come before its new
    version is written: a torn read merged into the document, and then the whole file
    merged against the old base on the next pass, doubled the torn part."""
    a = make_replica("a")
    src, _ = folder(a, tmp_path / "src")
    notes = src.root / "notes.txt"
    notes.write_text("line one\n")
    src.scan()
    notes.write_text("line one\nline 1.5\n")
    monkeypatch.setattr("builtins.open", _Disk(notes, "grows", b"line two\n"))
    assert src.scan().problems == [f"skipped {notes}: it changed while being read (next pass)"]
    monkeypatch.undo()
    src.scan()
    assert notes.read_text() == "line one\nline 1.5\nline two\n"
    assert current(a, "notes.txt") == notes.read_bytes()


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=3 * CHUNK_MIN), st.integers(0, 3 * CHUNK_MIN), st.binary(max_size=999))
def test_chunking_is_lossless_and_an_insert_moves_few_chunks(
    base: bytes, where: int, insert: bytes
) -> None:
    chunks = list(cut(io.BytesIO(base)))
    assert b"".join(chunks) == base
    assert all(len(c) <= CHUNK_MAX for c in chunks)
    edited = base[:where] + insert + base[where:]
    assert b"".join(cut(io.BytesIO(edited))) == edited


def test_an_insert_in_a_big_file_stores_only_nearby_chunks(
    make_replica: Callable[[str], Replica], tmp_path: Path
) -> None:
    a = make_replica("a")
    writer = FileWriter(a.engine)
    big = noise(12 * 1024 * 1024, 8)
    first = writer.put("big.bin", io.BytesIO(big), mtime_ms=1)
    edited = big[: 6 * 1024 * 1024] + b"inserted" + big[6 * 1024 * 1024 :]
    second = writer.put("big.bin", io.BytesIO(edited), mtime_ms=2)
    assert first.new_bytes == len(big)
    assert second.new_bytes < 2 * CHUNK_MAX  # content-defined: only the chunk(s) around it
    assert current(a, "big.bin") == edited


def test_text_edits_apply_to_the_crdt_as_diffs() -> None:
    old, new = "héllo wörld\nline two\n", "héllo big wörld\nline 2\n"
    from pycrdt import Doc, Text

    doc: Doc = Doc()  # type: ignore[type-arg]
    body = doc.get("body", type=Text)
    body.insert(0, old)
    for offset, delete, insert in text_edits(old, new):
        if delete:
            del body[offset : offset + delete]
        if insert:
            body.insert(offset, insert)
    assert str(body) == new


def test_a_merge_written_but_not_noted_is_not_applied_twice(
    trio: list[Replica], tmp_path: Path
) -> None:
    a, b = trio[0], trio[1]
    fa, _ = folder(a, tmp_path / "a-dir", mirror=True)
    fb, _ = folder(b, tmp_path / "b-dir", mirror=True)
    (fa.root / "t.txt").write_text("one\n")
    fa.scan()
    exchange(a, b)
    fb.scan()
    (fb.root / "t.txt").write_text("one\ntwo\n")
    fb.scan()
    exchange(a, b)
    # A's mirror wrote the merge and died before noting it: its base is still "one\n".
    (fa.root / "t.txt").write_text("one\ntwo\n")
    os.utime(fa.root / "t.txt", ns=(1, 10**18))
    fa.scan()
    doc = resolve_file(a, "t.txt")
    assert str(a.engine.open(doc).body) == "one\ntwo\n"  # not "one\ntwo\ntwo\n"
    assert (fa.root / "t.txt").read_text() == "one\ntwo\n"


def test_blob_hashes_follow_the_vaults_founding_format(make_replica) -> None:
    """A vault founded in format v2 addresses chunks with keyed BLAKE3, an older one keeps
    keyed BLAKE2b (so its addresses and deduplication survive the upgrade); in both, the
    streamed content hash is the hash of the whole."""
    replica = make_replica("a")
    assert replica.log.vault_format() == 2
    pieces = [b"", os.urandom(5000), b"x" * 70_000, os.urandom(3)]
    data = b"".join(pieces)
    ids = set()
    for vault_format in (1, 2):
        keys = BlobKeys(replica.engine.keyring, vault_format)
        hasher = keys.content_hasher()
        for piece in pieces:
            hasher.update(piece)
        assert hasher.digest() == keys.content_hash(data)
        ids |= {keys.chunk_id(data), keys.content_hash(data)}
    assert len(ids) == 4  # two formats, two purposes: four different keyed hashes
    writer = FileWriter(replica.engine)
    writer.put("f.bin", io.BytesIO(data), mtime_ms=0)
    chunk = BlobKeys(replica.engine.keyring, 2).chunk_id(data)
    assert files.has_chunk(replica.store, chunk)  # the new vault stored it under BLAKE3


def test_an_unmounted_drive_is_not_a_folder_whose_files_were_deleted(
    make_replica: Callable[[str], Replica], tmp_path: Path
) -> None:
    """The drive was unmounted while shoal was stopped: the next start finds an empty mount
    point. Without the marker its scan took every file as deleted; now the folder is refused
    with one line and nothing is deleted, until the drive is back or the user says the
    folder was emptied on purpose (by making the marker)."""
    a = make_replica("a")
    src, _ = folder(a, tmp_path / "src")
    for i in range(3):
        (src.root / f"f{i}.txt").write_text(f"file {i}\n")
    src.scan()
    assert (src.root / MARKER).is_dir()
    empty(src.root)  # unmounted: the mount point is an empty directory
    with pytest.raises(NotFoundError, match=f"empty, and its marker {MARKER} is missing"):
        Folder(a, src.root)
    assert len(files.file_entries(a.store)) == 3  # nothing taken as deleted
    (src.root / MARKER).mkdir()  # "I emptied it on purpose"
    result = Folder(a, src.root).scan()
    assert result.deleted == 3 and files.file_entries(a.store) == []


def test_a_folder_bound_before_markers_gets_one_and_an_absent_marker_stops_the_mirror(
    make_replica: Callable[[str], Replica], tmp_path: Path
) -> None:
    """A folder bound by an older shoal (records, no marker) that still holds its files is
    given a marker and scanned as usual; a mirror whose marker goes missing while it runs
    writes nothing into what is then an empty mount point."""
    a = make_replica("a")
    src, _ = folder(a, tmp_path / "src")
    (src.root / "kept.txt").write_text("kept\n")
    src.scan()
    (src.root / MARKER).rmdir()  # as an older shoal left it
    again = Folder(a, src.root)
    assert (src.root / MARKER).is_dir() and again.scan().deleted == 0
    mirror, reports = folder(a, tmp_path / "mirror", mirror=True)
    mirror.scan()
    assert (mirror.root / "kept.txt").read_bytes() == b"kept\n"
    empty(mirror.root)  # its drive is unmounted under it
    src.writer.put("new.txt", io.BytesIO(b"new\n"), mtime_ms=1)
    assert mirror.materialize(None) == 0
    assert list(mirror.root.iterdir()) == []
    assert any("the folder itself is gone" in line for line in reports)


def test_adding_one_file_leaves_no_marker_beside_it(tmp_path: Path) -> None:
    home, loose = tmp_path / "home", tmp_path / "downloads"
    run(home, "init", "--name", "a")
    loose.mkdir()
    (loose / "one.txt").write_text("one\n")
    run(home, "add", str(loose / "one.txt"))
    assert sorted(p.name for p in loose.iterdir()) == ["one.txt"]


@given(st.lists(st.text(alphabet="ab.", min_size=1, max_size=6), min_size=1, max_size=3))
def test_a_paths_last_suffixes_are_what_pathlib_says(parts: list[str]) -> None:
    """The mime lookup's key, cut from the string, for any vault path (normalized: no '.'
    or '..' parts)."""
    from pathlib import PurePosixPath

    from engine.ingest import _last_suffixes

    if any(part in (".", "..") for part in parts):
        return
    path = "/".join(parts)
    assert _last_suffixes(path) == "".join(PurePosixPath(path).suffixes[-2:])


def test_a_mirror_that_lost_its_records_reads_its_files_again_and_changes_nothing(
    trio: list[Replica], tmp_path: Path
) -> None:
    """A crash between a mirror's writes and their records (or a lost ``folder_files``
    table: it is local bookkeeping): the files are read again, found to be the vault's,
    and no version or conflict is made."""
    a, b = trio[0], trio[1]
    src, _ = folder(a, tmp_path / "src")
    for i in range(3):
        (src.root / f"f{i}.bin").write_bytes(noise(2000, i))
    (src.root / "note.md").write_text("hello\n")
    src.scan()
    exchange(a, b)
    dst, reports = folder(b, tmp_path / "dst", mirror=True)
    assert dst.scan().written == 4
    events = b.store.query_one("SELECT count(*) FROM events")
    with b.store.atomic():
        b.store.conn.execute("DELETE FROM folder_files")  # the commits a crash dropped
    result = dst.scan()
    assert (result.added, result.changed, result.written, reports) == (0, 0, 0, [])
    assert b.store.query_one("SELECT count(*) FROM events") == events
    assert files.conflicts(b.store) == [] and files.clashes(b.store) == []
