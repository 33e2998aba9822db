"""W2 one-shot sync: N events pulled by a fresh replica, two processes over loopback.

Setup (untimed): replica A founds a vault; B is made a member the way pairing does it (A
appends B's ``member.add``, B receives the bootstrap events and unwraps its keys) and gets
nothing more. A then writes N real events — sealed (epoch 1, ChaCha20-Poly1305 under a
one-time HKDF key), signed, chained, stored — through ``Log.append_local``, 1,000 per
transaction, and its engine catches up (indexes them). A's vault is cached under
``bench/out/`` (keyed by N and the schema); B starts from a fresh copy of its bootstrap home
every run.

Timed: ``shoal serve --listen`` runs on A; ``shoal --home B sync http://A --json`` runs as a
child process, from spawn to exit (start-up, handshake, N events over one WebSocket,
segment-verified and applied on B, every batch acknowledged). A second, no-op sync right after
measures the fixed cost (process start, imports, open, handshake), so the transfer alone can
be stated too. B's peak RSS is the child's ``VmHWM`` (sampled from ``/proc`` every 5 ms).

Limit, measured in the same run on the very same events: the naive design, one Ed25519
verification per event (``cryptography``'s ``Ed25519PublicKey.verify`` on each event's signed
bytes, key objects prepared beforehand, one process, nothing else done) — the ceiling of any
sync that verifies every event, timed on the first 30,000 events (a per-event cost). This
machine's speed drifts by ±20 % within a minute, so the run is ``--rounds`` (default 3) pairs:
each sync is compared with the naive limit measured right before and right after it (the
faster of the two: the conservative choice), and the median round's ratio is the figure;
every round is printed.

B applies what it receives in a second process while it stores it (``replicas.apply_helper``):
the "applied beside" line says how many events that process applied.

Full mode also runs the transfer at 1,000,000 events for B's peak RSS (the first build of that
vault takes several minutes; ``--big 0`` skips it).

    .venv/bin/python -m bench.w2_sync [--quick] [--n N] [--big N] [--rounds R] [--rebuild]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bench._common import (
    OUT_DIR,
    REPO_ROOT,
    child_env,
    now,
    parser,
    progress,
    report,
    verdict,
    warm_bytecode,
)
from eventlog.crypto import KxKey, SigningKey
from eventlog.envelope import Kind, decode_event
from eventlog.store import Store
from replicas.home import Home
from replicas.vault import Replica, init_vault, join_vault

NAME = "w2_sync"
GOAL_RATE = 40_000.0
GOAL_RATIO = 3.0
GOAL_RSS_MB = 300.0
FULL_N = 100_000
QUICK_N = 20_000
BIG_N = 1_000_000
BUILD_BATCH = 1000
NAIVE_MAX = 30_000
"""The naive limit is a per-event cost, timed on a prefix of this many events (~4 s here)."""
VAULT_VERSION = 2  # 2: events in format v2 (design note 26)


# --- helpers shared with the other network benchmarks (w3b, w6) -------------------------------


def shoal_command() -> list[str]:
    """The ``shoal`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("shoal")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import cli; cli.main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def schema_key() -> str:
    """A short hash of every migration: a cached vault is rebuilt when the schema changes."""
    digest = hashlib.sha256()
    for package in ("eventlog", "engine"):
        for path in sorted((REPO_ROOT / package / "migrations").glob("*.sql")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


class Child:
    """A long-running ``shoal`` subprocess (relay or serve), ready once it prints ``ready``."""

    def __init__(self, args: list[str], ready: str, logs: Path, timeout: float = 120.0) -> None:
        logs.parent.mkdir(parents=True, exist_ok=True)
        self.out_path = logs.with_suffix(".out")
        self.err_path = logs.with_suffix(".err")
        self.args = args
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, env=child_env())
        deadline = time.monotonic() + timeout
        while True:
            text = self.out_path.read_text(encoding="utf-8", errors="replace")
            if ready in text:
                self.ready_line = next(line for line in text.splitlines() if ready in line)
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{' '.join(args[:4])} did not start: "
                    + self.err_path.read_text(encoding="utf-8", errors="replace")[-2000:]
                )
            time.sleep(0.05)

    def url(self) -> str:
        match = re.search(r"http://[\d.]+:\d+", self.ready_line)
        if match is None:
            raise RuntimeError(f"no URL in {self.ready_line!r}")
        return match.group(0)

    def stop(self) -> int:
        """SIGTERM (graceful shutdown), then SIGKILL if it lingers; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def stderr_tail(self, chars: int = 1500) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")[-chars:]


def start_relay(data: Path, logs: Path) -> Child:
    port = free_port()
    return Child(
        [*shoal_command(), "relay", "--data", str(data), "--listen", f"127.0.0.1:{port}"],
        "shoal relay listening on",
        logs,
    )


def add_member(founder: Replica, root: Path, name: str) -> Replica:
    """A second member, set up the way pairing does: added by the founder, keys unwrapped."""
    signer, kx = SigningKey.generate(), KxKey.generate()
    founder.engine.add_member(signer.public, kx.public)
    joined = join_vault(Home(root), founder.log.vault_id, signer, kx, name)
    raws = [row.raw for row in founder.store.events_after(0, 10**9)]
    joined.engine.accept_remote_batch(raws)
    joined.home.save_vault_keys(joined.engine.adopt_keys(kx))
    return joined


def append_events(replica: Replica, n: int, batch: int = BUILD_BATCH, text: int = 100) -> None:
    """``n`` real sealed + signed data events of ``replica``, ``batch`` per transaction."""
    engine, log, store = replica.engine, replica.log, replica.store
    signer, keyring = engine.signer, engine.keyring
    epoch = keyring.current_epoch
    filler = "x" * text
    for first in range(0, n, batch):
        with store.atomic():
            for i in range(first, min(n, first + batch)):
                log.append_local(
                    signer, keyring, Kind.DATA, epoch, {"t": "bench.note", "n": i, "text": filler}
                )
        if (first // batch) % 50 == 49:
            progress(f"  {first + batch:,}/{n:,} events written")


def db_heads(db: Path) -> dict[bytes, int]:
    """A vault database's version vector (author -> seq), read-only, from any process."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {bytes(a): int(s) for a, s in conn.execute("SELECT author, seq FROM heads")}
    finally:
        conn.close()


def mb(kib: int) -> float:
    return kib / 1024


# --- the benchmark ------------------------------------------------------------------------------


def build_vault(n: int, rebuild: bool) -> Path:
    """A's home with ``n`` events and B's bootstrap home, cached in ``bench/out``."""
    cache = OUT_DIR / f"w2-vault-n{n}-v{VAULT_VERSION}-{schema_key()}"
    if (cache / "done").exists() and not rebuild:
        progress(f"using cached vault {cache.relative_to(REPO_ROOT)}")
        return cache
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    progress(f"building A with {n:,} events (cached for later runs)")
    t0 = now()
    a = init_vault(Home(cache / "a"), "bench-w2-a")
    b = add_member(a, cache / "b0", "bench-w2-b")
    b.close()
    append_events(a, n)
    written = now() - t0
    progress(f"  written in {written:.0f} s; A's engine indexes them")
    a.engine.catch_up()
    a.close()
    (cache / "done").write_text(json.dumps({"n": n, "build_s": now() - t0}) + "\n")
    return cache


def naive_verify(db: Path, limit: int) -> tuple[float, int]:
    """Events/s of one ``Ed25519PublicKey.verify`` per event over A's first ``limit`` events."""
    store = Store.open_readonly(db)
    try:
        raws = [row.raw for row in store.events_after(0, limit)]
    finally:
        store.close()
    events = [decode_event(raw) for raw in raws]
    keys = {e.author: Ed25519PublicKey.from_public_bytes(e.author) for e in events}
    work = [(keys[e.author], e.sig, e.message) for e in events]
    t0 = now()
    for key, sig, message in work:
        key.verify(sig, message)
    return len(work) / (now() - t0), len(work)


def vm_hwm_kib(pid: int) -> int:
    """Peak RSS of a live process's own address space (``VmHWM``), in KiB; 0 once it is gone.

    Not ``ru_maxrss``: Linux carries the pre-``exec`` peak (a fork of this benchmark process,
    which holds the naive limit's events) into the child's ``ru_maxrss``.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def child_pids(pid: int) -> list[int]:
    """The live children of a process (from ``/proc``); none once it is gone."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def timed_child(args: list[str], cwd: Path) -> tuple[float, int, str, str, int]:
    """Run a child to completion: wall seconds, exit code, stdout, stderr, peak RSS (KiB).

    A thread waits for the child (exact end time) while this one samples its ``VmHWM`` and
    those of its own children (the apply helper): the peak is the sum of the per-process
    peaks, an upper bound of what the replica held at once.
    """
    out_path, err_path = cwd / "child.out", cwd / "child.err"
    ended: list[tuple[float, int]] = []
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = now()
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=child_env())

        def reap() -> None:
            _, status = os.waitpid(proc.pid, 0)
            ended.append((now(), os.waitstatus_to_exitcode(status)))

        waiter = threading.Thread(target=reap)
        waiter.start()
        peaks: dict[int, int] = {}
        while waiter.is_alive():
            for pid in (proc.pid, *child_pids(proc.pid)):
                peaks[pid] = max(peaks.get(pid, 0), vm_hwm_kib(pid))
            waiter.join(0.005)
        peak = sum(peaks.values())
    t1, proc.returncode = ended[0]
    return (
        t1 - t0,
        proc.returncode,
        out_path.read_text(encoding="utf-8"),
        err_path.read_text(encoding="utf-8", errors="replace"),
        peak,
    )


@contextlib.contextmanager
def serving(home: Path, logs: Path) -> Iterator[Child]:
    child = Child(
        [*shoal_command(), "--home", str(home), "serve", "--listen", "127.0.0.1:0"],
        "listening on http://",
        logs,
    )
    try:
        yield child
    finally:
        child.stop()


def transfer(cache: Path, n: int, tmp: Path) -> dict[str, Any]:
    """One timed ``shoal sync`` of a fresh B against A's ``shoal serve``; checked."""
    b_home = tmp / f"b-{n}"
    shutil.copytree(cache / "b0", b_home)
    a_db = cache / "a" / "vault.db"
    before = sum(db_heads(b_home / "vault.db").values())
    with serving(cache / "a", tmp / f"serve-a-{n}") as server:
        url = server.url()
        progress(f"A serves at {url}; B syncs {n:,} events")
        sync = [*shoal_command(), "--home", str(b_home), "sync", url, "--json"]
        wall, code, out, err, rss = timed_child(sync, tmp)
        if code != 0:
            raise RuntimeError(f"shoal sync failed ({code}): {err[-2000:]}")
        moved = json.loads(out)
        noop, code, out2, err2, _ = timed_child(sync, tmp)
        if code != 0:
            raise RuntimeError(f"no-op shoal sync failed ({code}): {err2[-2000:]}")
        again = json.loads(out2)
    a_heads, b_heads = db_heads(a_db), db_heads(b_home / "vault.db")
    conn = sqlite3.connect(f"file:{b_home / 'vault.db'}?mode=ro", uri=True)
    try:
        applied = conn.execute("SELECT count(*) FROM event_index").fetchone()[0]
        stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    expected_new = sum(a_heads.values()) - before
    ok = (
        a_heads == b_heads
        and moved["stored"] == expected_new
        and applied == stored
        and again["stored"] == 0
    )
    shutil.rmtree(b_home, ignore_errors=True)
    return {
        "n": n,
        "events_moved": moved["stored"],
        "bytes_received": moved["bytes_received"],
        "applied_by_helper": moved["applied_by_helper"],
        "wall_s": wall,
        "noop_s": noop,
        "rate_wall": moved["stored"] / wall,
        "rate_transfer": moved["stored"] / max(wall - noop, 1e-9),
        "b_peak_rss_mb": mb(rss),
        "converged": ok,
    }


def main(argv: list[str] | None = None) -> int:
    p = parser("W2 one-shot sync of N events to a fresh replica vs one verify per event")
    p.add_argument("--n", type=int, help=f"events (default {FULL_N:,}; --quick {QUICK_N:,})")
    p.add_argument(
        "--big", type=int, help=f"also a run at this size for peak RSS (default {BIG_N:,}; 0 = no)"
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="naive limit + sync pairs; the median ratio counts"
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached vaults")
    args = p.parse_args(argv)
    n = args.n or (QUICK_N if args.quick else FULL_N)
    big = args.big if args.big is not None else (0 if args.quick else BIG_N)
    rounds = max(1, args.rounds if not args.quick else 1)

    cache = build_vault(n, args.rebuild)
    big_cache = build_vault(big, args.rebuild) if big else None
    warm_bytecode()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shoal-w2-") as tmp_name:
        tmp = Path(tmp_name)
        naive_n = min(n + 10, NAIVE_MAX)
        for r in range(rounds):
            # The machine's speed drifts within a minute: each sync is compared with the
            # naive limit measured right before and right after it (the faster of the two).
            progress(f"round {r + 1}/{rounds}: naive limit, sync, naive limit")
            before, _ = naive_verify(cache / "a" / "vault.db", naive_n)
            run = transfer(cache, n, tmp)
            after, _ = naive_verify(cache / "a" / "vault.db", naive_n)
            run.update(naive_before=before, naive_after=after, naive=max(before, after))
            run["ratio"] = run["rate_wall"] / run["naive"]
            runs.append(run)
        big_run = transfer(big_cache, big, tmp) if big_cache is not None else None

    main_run = sorted(runs, key=lambda run: run["ratio"])[len(runs) // 2]  # the median round
    naive, rate, ratio = main_run["naive"], main_run["rate_wall"], main_run["ratio"]
    rate_ok = rate >= GOAL_RATE
    ratio_ok = ratio >= GOAL_RATIO * 0.95
    if big_run is not None:
        rss_mb, rss_at, rss_note = big_run["b_peak_rss_mb"], big, "measured"
    else:
        rss_mb, rss_at, rss_note = main_run["b_peak_rss_mb"], n, "measured at this size only"
    rss_ok = rss_mb < GOAL_RSS_MB
    converged = all(run["converged"] for run in runs) and (big_run is None or big_run["converged"])
    every = ", ".join(
        f"{run['rate_wall']:,.0f}/{run['naive']:,.0f} = {run['ratio']:.2f}" for run in runs
    )
    lines = [
        (
            "naive limit: 1 Ed25519 verify/event",
            f"{naive:,.0f} events/s (1 process; before {main_run['naive_before']:,.0f}, "
            f"after {main_run['naive_after']:,.0f}; {naive_n:,} events)",
        ),
        (
            "shoal sync, wall (spawn to exit)",
            f"{rate:,.0f} events/s ({main_run['wall_s']:.2f} s for "
            f"{main_run['events_moved']:,} events, {main_run['bytes_received'] / 1e6:.1f} MB)",
        ),
        (
            "shoal sync, transfer only",
            f"{main_run['rate_transfer']:,.0f} events/s (minus a no-op sync: "
            f"{main_run['noop_s']:.2f} s of start-up + handshake)",
        ),
        (
            "applied beside the sync",
            f"{main_run['applied_by_helper']:,} events by the apply helper process",
        ),
        ("shoal / naive", f"{ratio:.2f} (goal ≈ {GOAL_RATIO:.0f}) -> {verdict(ratio_ok)}"),
        (f"every round ({rounds})", f"shoal/naive events/s: {every}; the median counts"),
        (
            "shoal events/s",
            f"{rate:,.0f} (goal >= {GOAL_RATE:,.0f}) -> {verdict(rate_ok)}",
        ),
        (
            "B peak RSS",
            f"{main_run['b_peak_rss_mb']:.0f} MB at {n:,} events (sync + apply helper)",
        ),
    ]
    if big_run is not None:
        lines += [
            (
                f"at {big:,} events",
                f"{big_run['rate_wall']:,.0f} events/s wall "
                f"({big_run['wall_s']:.1f} s), transfer only {big_run['rate_transfer']:,.0f}",
            ),
            (
                f"B peak RSS at {big:,}",
                f"{rss_mb:.0f} MB (goal < {GOAL_RSS_MB:.0f}) -> {verdict(rss_ok)}",
            ),
        ]
    else:
        lines.append(
            (
                f"B peak RSS at {BIG_N:,}",
                f"not measured (--quick/--big 0); {rss_mb:.0f} MB at {n:,} "
                f"(goal < {GOAL_RSS_MB:.0f} at {BIG_N:,})",
            )
        )
    lines.append(("B == A after sync", "yes" if converged else "NO"))
    report(
        NAME,
        f"W2 one-shot sync A -> fresh B ({n:,} events, two processes over loopback)",
        lines,
        {
            "n": n,
            "quick": args.quick,
            "naive_events_per_s": naive,
            "shoal_events_per_s": rate,
            "ratio": ratio,
            "run": main_run,
            "rounds": runs,
            "big_run": big_run,
            "rss_mb": rss_mb,
            "rss_at": rss_at,
            "rss_note": rss_note,
            "goal_events_per_s": GOAL_RATE,
            "goal_ratio": GOAL_RATIO,
            "goal_rss_mb": GOAL_RSS_MB,
            "met": rate_ok and ratio_ok and (big_run is None or rss_ok) and converged,
        },
    )
    return 0 if converged else 1


if __name__ == "__main__":
    raise SystemExit(main())
