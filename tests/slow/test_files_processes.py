"""Files across real processes: a watched folder on A, a relay, a mirror on B (real watchfiles)."""

from __future__ import annotations

import hashlib
import os
import random
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from blake3 import blake3

from tests.slow.conftest import SHOAL, Proc, Procs, scaled, shoal, shoal_json, wait_until
from tests.slow.test_sync_processes import marker

pytestmark = pytest.mark.slow


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes. The folder is live (a mirror writes and
    removes files while this reads it): a file gone between listing and reading is left
    out, and the caller's next poll sees the folder as it then is."""
    found = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith(".shoal-tmp-"):
            try:
                found[p.relative_to(root).as_posix()] = p.read_bytes()
            except FileNotFoundError:
                continue
    return found


def pair(procs: Procs, tmp_path: Path) -> tuple[Path, Path, str]:
    relay = procs.relay(tmp_path / "relay")
    a, b = tmp_path / "a", tmp_path / "b"
    shoal(a, "init", "--name", "a")
    code = shoal(a, "invite", "--relay", relay.url).stdout.split()[-1]
    shoal(b, "join", code, "--name", "b")
    return a, b, relay.url


def test_watched_folder_reaches_a_mirror_and_edits_merge_back(procs: Procs, tmp_path: Path) -> None:
    a, b, relay = pair(procs, tmp_path)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "before.txt").write_text("written while shoal was not running\n")
    procs.serve(a, "--relay", relay, "--mirror", str(src))
    procs.serve(b, "--relay", relay, "--mirror", str(dst))
    rng = random.Random(9)
    blob = rng.randbytes(700_000)
    (src / "docs").mkdir()
    (src / "docs" / "plan.md").write_text("one\ntwo\nthree\n")
    (src / "docs" / "photo.bin").write_bytes(blob)
    (src / "deep" / "new" / "dir").mkdir(parents=True)
    (src / "deep" / "new" / "dir" / "right-after-mkdir.txt").write_text("quick\n")
    wait_until(lambda: tree(dst) == tree(src), 60, "the mirror to match the watched folder")
    # modify, rename, delete on A
    (src / "docs" / "photo.bin").rename(src / "docs" / "renamed.bin")
    (src / "before.txt").unlink()
    (src / "deep" / "new" / "dir" / "right-after-mkdir.txt").write_text("quick, edited\n")
    wait_until(lambda: tree(dst) == tree(src), 60, "modify/rename/delete to reach the mirror")
    listing = {f["path"]: f for f in shoal_json(b, "files", "--deleted")}
    assert listing["docs/renamed.bin"]["versions"] == 2  # a rename is a version, not a new file
    assert listing["before.txt"]["deleted"]
    # the same text file edited on both sides "at once": both edits survive, no conflict copy
    (src / "docs" / "plan.md").write_text("one (from a)\ntwo\nthree\n")
    (dst / "docs" / "plan.md").write_text("one\ntwo\nthree\nfour (from b)\n")
    merged = "one (from a)\ntwo\nthree\nfour (from b)\n"
    wait_until(
        lambda: (
            (src / "docs" / "plan.md").read_text() == merged
            and (dst / "docs" / "plan.md").read_text() == merged
        ),
        60,
        "the concurrent text edits to merge on both sides",
    )
    assert not [p for p in dst.rglob("*") if "conflict" in p.name]
    wait_until(lambda: tree(dst) == tree(src), 30, "both folders to agree")


def test_relay_store_holds_no_names_or_content(procs: Procs, tmp_path: Path) -> None:
    a, b, relay = pair(procs, tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    name, text = marker("SecretFileName"), marker("planted-content")
    (src / f"{name}.txt").write_text(text * 40 + "\n")
    binary = random.Random(3).randbytes(300_000)
    (src / f"{name}.bin").write_bytes(binary)
    shoal(a, "add", str(src))
    shoal(a, "sync", relay)
    shoal(b, "sync", relay)
    shoal(b, "get", f"{name}.bin", "--out", str(tmp_path / "got.bin"))
    assert (tmp_path / "got.bin").read_bytes() == binary
    stored = b"".join(p.read_bytes() for p in (tmp_path / "relay").rglob("*") if p.is_file())
    for planted in (name.encode(), text.encode(), binary[1000:1064]):
        assert planted not in stored
    assert hashlib.sha256(binary).digest() not in stored
    assert hashlib.blake2b(binary, digest_size=32).digest() not in stored
    assert blake3(binary).digest() not in stored  # unkeyed: what chunk ids must not be


def test_identical_files_are_stored_once_and_big_files_stream(tmp_path: Path) -> None:
    home = tmp_path / "h"
    shoal(home, "init", "--name", "h")
    src = tmp_path / "src"
    src.mkdir()
    size = scaled(1 << 30, 64 << 20)  # 1 GiB in a full run
    rng = random.Random(11)
    with open(src / "big.bin", "wb") as sink:
        left = size
        while left:
            block = rng.randbytes(min(left, 8 << 20))
            sink.write(block)
            left -= len(block)
    os.link(src / "big.bin", src / "same.bin")  # identical content under a second name
    code = (
        "import resource, subprocess, sys;"
        f"subprocess.run([{SHOAL!r}, '--home', {str(home)!r}, 'add', {str(src)!r}], check=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak_kib = int(done.stdout.split()[-1])
    assert peak_kib < 300 * 1024, f"ingest of {size} bytes peaked at {peak_kib} KiB"
    info = shoal_json(home, "status")
    listing = {f["path"]: f for f in shoal_json(home, "files")}
    assert listing["big.bin"]["hash"] == listing["same.bin"]["hash"]
    db = home / "vault.db"
    assert db.stat().st_size < size * 1.2  # stored once (plus overhead), not twice
    assert info["events"] > 0
    out = tmp_path / "out.bin"
    shoal(home, "get", "same.bin", "--out", str(out))
    assert out.stat().st_size == size
    with open(out, "rb") as got, open(src / "big.bin", "rb") as want:
        while True:
            x, y = got.read(8 << 20), want.read(8 << 20)
            assert x == y
            if not x:
                break
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def folder_workers(serve: Proc) -> list[int]:
    """The pids of a daemon's folder worker processes (its children running the worker)."""
    pid = serve.popen.pid
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = []
    for child in children:
        try:
            if b"replicas.folder_worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
        except OSError:
            continue
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def folders_pair(procs: Procs, tmp_path: Path) -> tuple[Path, Path, str, Path, Path]:
    """``pair``, and an empty folder for each side."""
    a, b, relay = pair(procs, tmp_path)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    return a, b, relay, src, dst


def test_the_folder_worker_restarts_and_never_outlives_its_daemon(
    procs: Procs, tmp_path: Path
) -> None:
    a, b, relay, src, dst = folders_pair(procs, tmp_path)
    serve_a = procs.serve(a, "--relay", relay, "--watch", str(src))
    serve_b = procs.serve(b, "--relay", relay, "--mirror", str(dst))
    wait_until(lambda: len(folder_workers(serve_a)) == 1, 30, "A's folder worker to start")
    (src / "one.txt").write_text("one\n")
    wait_until(lambda: tree(dst) == tree(src), 60, "the first file to reach the mirror")
    # A worker that dies is restarted; its startup scan finds what changed meanwhile.
    [first] = folder_workers(serve_a)
    os.kill(first, signal.SIGKILL)
    (src / "two.txt").write_text("two\n")
    wait_until(
        lambda: folder_workers(serve_a) not in ([], [first]), 30, "the worker to be restarted"
    )
    wait_until(lambda: tree(dst) == tree(src), 60, "the file written meanwhile to arrive")
    assert serve_a.alive() and "restarting" in serve_a.output()
    # kill -9 of a daemon: its worker sees its stdin close and goes too.
    [worker] = folder_workers(serve_b)
    serve_b.kill9()
    wait_until(lambda: not running(worker), 30, "the orphaned worker to exit")


def test_a_separate_mirror_command_follows_what_the_daemon_receives(
    procs: Procs, tmp_path: Path
) -> None:
    """`shoal mirror` beside a `shoal serve` of the same home (not `serve --mirror`)."""
    a, b, relay, src, dst = folders_pair(procs, tmp_path)
    procs.serve(a, "--relay", relay, "--watch", str(src))
    procs.serve(b, "--relay", relay)
    procs.start("mirror-b", "mirror", str(dst), home=b, ready="following")
    (src / "note.txt").write_text(marker("note") + "\n")
    (src / "sub").mkdir()
    (src / "sub" / "data.bin").write_bytes(os.urandom(50_000))
    wait_until(lambda: tree(dst) == tree(src), 60, "the separate mirror to follow the daemon")
