"""The crash loop (issue 6): ``kill -9`` at random points of ingest and of sync, many times.

Two replicas (A and B) run ``shoal serve`` through a relay while ``shoal append`` and
``shoal add`` run on both homes; each round kills one of them (a one-shot writer or a daemon)
at a random moment. Afterwards: every acknowledged write is present on both replicas (a write
is acknowledged when its command exited 0), no home's version vector ever went back, SQLite's
``integrity_check`` is ok, ``shoal verify`` is clean, nonces never repeated across all the
restarted processes, and sync converges.

Kills: ``SHOAL_CRASH_KILLS`` if set, else 1,000 at ``SHOAL_SLOW_SCALE=1`` (the issue's full
run) and 20 otherwise. Seed: ``SHOAL_CRASH_SEED`` (printed). Full run::

    SHOAL_SLOW_SCALE=1 .venv/bin/python -m pytest -m slow tests/slow/test_crash_loop.py -s
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from eventlog.crypto import one_time_key
from eventlog.envelope import decode_event
from eventlog.store import Store
from tests.slow.conftest import (
    SCALE,
    SHOAL,
    Proc,
    Procs,
    heads,
    relay_db,
    shoal,
    shoal_json,
    wait_until,
)

KILLS = int(os.environ.get("SHOAL_CRASH_KILLS", "1000" if SCALE >= 1 else "20"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(300, int(KILLS * 3)))]
SEED = int(os.environ.get("SHOAL_CRASH_SEED", str(random.SystemRandom().randrange(2**32))))
KILL_WINDOW = (0.3, 1.6)
"""A kill lands this long after a process starts, in units of how long one write takes on
this machine: in its start-up, in the write, or after it finished (then the write was
acknowledged and nothing is killed)."""


@dataclass
class Tally:
    kills: int = 0
    acked_lines: dict[Path, list[str]] = field(default_factory=dict)
    acked_files: dict[str, bytes] = field(default_factory=dict)
    killed_writes: int = 0
    failed_writes: list[str] = field(default_factory=list)
    write_s: float = 0.5
    """How long one ``shoal append`` takes here (measured), the unit of the kill window."""


def db(home: Path) -> Path:
    return home / "vault.db"


def never_behind(before: dict[str, int], after: dict[str, int], where: str) -> None:
    for author, seq in before.items():
        assert after.get(author, 0) >= seq, f"{where}: {author[:12]} went back from {seq}"


def run_killed(args: list[str], rng: random.Random, tally: Tally) -> bool:
    """Run a command, SIGKILL it at a random moment; True if it finished with success first."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + rng.uniform(*KILL_WINDOW) * tally.write_s
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
        tally.kills += 1
        tally.killed_writes += 1
        return False
    _, err = proc.communicate()
    if proc.returncode != 0:
        tally.failed_writes.append(err.decode(errors="replace").strip()[-200:])
    return proc.returncode == 0


def write_round(i: int, home: Path, doc: str, files: Path, rng: random.Random, t: Tally) -> None:
    if rng.random() < 0.6:
        line = f"{home.name} crash line {i} {rng.randrange(10**9)}"
        if run_killed([SHOAL, "--home", str(home), "append", doc, line + "\n"], rng, t):
            t.acked_lines.setdefault(home, []).append(line)
        return
    # Ingest: a small file (one event) or a large one (chunk events, then its version).
    size = rng.choice([200, 3000, 700_000])
    name = f"{home.name}-file-{i}.bin"
    path = files / name
    content = rng.randbytes(size)
    path.write_bytes(content)
    if run_killed([SHOAL, "--home", str(home), "add", str(path)], rng, t):
        t.acked_files[name] = content


def restart_killed(
    procs: Procs, daemon: Proc, home: Path, relay: str, rng: random.Random, tally: Tally
) -> Proc:
    """Let the daemon run a random while (syncing what the writers leave), then kill -9 it."""
    time.sleep(rng.uniform(*KILL_WINDOW) * tally.write_s)
    daemon.kill9()
    return procs.serve(home, "--relay", relay, listen=False)


def check_home(home: Path, doc: str, tally: Tally, rng: random.Random, tmp_path: Path) -> None:
    """SQLite and ``shoal verify`` clean; every acknowledged line and file there, byte-exact."""
    with contextlib.closing(sqlite3.connect(db(home))) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    result = shoal_json(home, "verify")
    assert result["ok"] and result["problems"] == [], result["problems"][:3]
    present = shoal(home, "cat", doc).stdout.splitlines()
    for writer, lines in tally.acked_lines.items():
        lost = [line for line in lines if present.count(line) != 1]
        assert lost == [], f"{home.name} lacks acknowledged lines of {writer.name}: {lost[:3]}"
    listed = {Path(f["path"]).name for f in shoal_json(home, "files")}
    assert set(tally.acked_files) <= listed, set(tally.acked_files) - listed
    for name in rng.sample(sorted(tally.acked_files), min(3, len(tally.acked_files))):
        out = tmp_path / f"{home.name}-{name}"
        shoal(home, "get", name, "--out", str(out))
        assert out.read_bytes() == tally.acked_files[name]


def time_one_write(home: Path, doc: str) -> float:
    """Seconds one ``shoal append`` takes on this machine now (the faster of two)."""
    times = []
    for i in range(2):
        started = time.monotonic()
        shoal(home, "append", doc, f"timed {i}\n")
        times.append(time.monotonic() - started)
    return min(times)


def test_kill_minus_nine_at_random_points(procs: Procs, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"\ncrash loop: {KILLS} kills, SHOAL_CRASH_SEED={SEED}")
    relay_data = tmp_path / "relay"
    relay = procs.relay(relay_data)
    a, b, files = tmp_path / "a", tmp_path / "b", tmp_path / "files"
    files.mkdir()
    shoal(a, "init", "--name", "a")
    doc = shoal_json(a, "new", "Crash log", "--text", "start\n")["doc"]
    code = shoal(a, "invite", "--relay", relay.url).stdout.split()[-1]
    shoal(b, "join", code, "--name", "b")
    vault = shoal_json(a, "status")["vault"]
    daemons = {
        a: procs.serve(a, "--relay", relay.url, listen=False),
        b: procs.serve(b, "--relay", relay.url, listen=False),
    }
    tally = Tally(write_s=time_one_write(a, doc))
    seen = {home: heads(db(home)) for home in (a, b)}
    seen_relay = heads(relay_db(relay_data, vault))
    rounds = 0
    started = time.monotonic()
    while tally.kills < KILLS:
        rounds += 1
        home = rng.choice([a, b])
        if rng.random() < 0.35:
            daemons[home] = restart_killed(procs, daemons[home], home, relay.url, rng, tally)
            tally.kills += 1
        else:
            write_round(rounds, home, doc, files, rng, tally)
        for where in (a, b):  # a crash never takes back what a home (or the relay) held
            now = heads(db(where))
            never_behind(seen[where], now, where.name)
            seen[where] = now
        now = heads(relay_db(relay_data, vault))
        never_behind(seen_relay, now, "relay")
        seen_relay = now
    elapsed = time.monotonic() - started
    assert tally.failed_writes == [], tally.failed_writes[:3]

    # Sync resumes: the daemons (restarted once more, cleanly) converge with the relay.
    for home in (a, b):
        daemons[home].stop()
        daemons[home] = procs.serve(home, "--relay", relay.url, listen=False)
        daemons[home].wait_for("shoal serve: vault")  # up, with its signal handlers

    def converged() -> bool:
        first = heads(db(a))
        return bool(first) and heads(db(b)) == first == heads(relay_db(relay_data, vault))

    wait_until(converged, 120, "A, B and the relay to converge after the crash loop")
    for home in (a, b):
        assert daemons[home].stop() == 0
    assert heads(relay_db(relay_data, vault)) == heads(db(a))

    for home in (a, b):
        check_home(home, doc, tally, rng, tmp_path)
    # Nonces (one-time key salts) never repeated across every process that wrote, killed or not.
    with contextlib.closing(Store.open(db(a))) as store:
        raws = [row.raw for row in store.events_after(0, 10**9) if row.epoch != 0]
    salts = [decode_event(raw).header.nonce for raw in raws]
    assert len(set(salts)) == len(salts) and len(
        {one_time_key(bytes(32), s) for s in salts}
    ) == len(salts)
    acked = sum(len(v) for v in tally.acked_lines.values()) + len(tally.acked_files)
    assert acked > 0 and tally.killed_writes > 0, "the kills should land both before and after"
    print(
        f"crash loop: survived {tally.kills} kills in {rounds} rounds ({elapsed:.0f} s); "
        f"{acked} acknowledged writes all present, {tally.killed_writes} writes killed; "
        f"{len(salts)} sealed events, no nonce repeated; seed {SEED}"
    )
