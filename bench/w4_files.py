"""W4 file sync side by side with Syncthing: A's folder -> B's folder, same workloads, one run.

Workloads (incompressible content from a seeded RNG, every file different, so neither system
can deduplicate): W4a 1,000 x 64 KiB files (MB/s), W4b 10,000 x 4 KiB files (files/s), W4c
one 256 MiB file (MB/s); ``--quick``: 200, 2,000 files and 32 MiB. Many-file workloads sit in
sub-folders of 100 files (``d000/f00000.bin``), as photos or sources do.

What is timed, identically for both systems: each workload is first written into a staging
folder on the same file system and flushed to the disk (``os.sync``), untimed. The clock
starts, the sub-folders are created in A's folder and every file is *renamed* into it from the
staging folder: each file appears whole and at once (no system sees or syncs a half-written
file) and neither pays for generating or writing the bytes, only for noticing, reading,
hashing, sending and writing them on B. The clock stops when B's folder holds every file
byte-exact: the harness polls B's folder (``stat`` of the files still missing; a file whose
size is right is hashed, and counts from the moment its size was seen if the hash matches),
resting between sweeps at least four times as long as a sweep took, so that it never takes
much of the two cores from the system it times (see ``wait_complete``).

Before each timed run a one-byte warm-up file is synced A -> B (untimed), so both systems
start connected and idle, with the folder shared and their watchers running.

Syncthing (Debian's package, installed by this script when missing): two instances on
127.0.0.1 with their own ``--home``, GUI/REST and sync ports; no global or local discovery,
relays, NAT traversal, usage or crash reporting, upgrades or low CPU priority (options set
through ``PATCH /rest/config/options``, then restarted since the priority applies at start).
Each side adds the other through ``/rest/config/devices`` with ``tcp://127.0.0.1:PORT``; each
workload gets a fresh folder on both (``/rest/config/folders``, ``sendreceive``, watcher on
with ``fsWatcherDelayS=1``, ``rescanIntervalS=3600``, other folder options default) and
``POST /rest/db/scan`` is called right after the files are in. Also noted: when B's own
``/rest/db/status`` first says ``localFiles == N, needFiles == 0``.

shoal: a relay (``shoal relay``), replica A founds a vault and B is made a member the way
pairing does it; A runs ``shoal serve --relay URL --watch DIR_A`` and B ``shoal serve --relay
URL --mirror DIR_B``, a fresh relay and vault per workload.

restic, for reference on W4c: ``restic backup`` of the same 256 MiB file into a fresh local
repository, timed from spawn to exit.

The ratio is shoal / Syncthing of the same run. Shown too, to tell where the time goes: the
CPU seconds of each system's processes over the timed window and their peak RSS (Syncthing A
and B; shoal's relay, A and B; on a 2-core machine CPU seconds tell how much of the wall time
is work), when A had indexed every file (Syncthing's ``localFiles`` on A; the ``files`` table
of A's vault), when the relay held A's whole log and B's vault listed every file (shoal).

Each system's child processes keep their logs in ``bench/out/w4-logs/``. ``--rounds R`` runs
each system R times per workload, alternating which goes first, and keeps the fastest.

    .venv/bin/python -m bench.w4_files [--quick] [--only w4a,w4b,w4c]
        [--systems syncthing,shoal,restic] [--rounds R] [--timeout S]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench._common import now, parser, progress, report, verdict
from bench.w2_sync import (
    Child,
    add_member,
    db_heads,
    shoal_command,
    start_relay,
    vm_hwm_kib,
)
from bench.w3b_live_trace import connected, db_vault, serve
from bench.w4_syncthing import (
    FOLDER_OPTIONS,
    ST_OPTIONS,
    Syncthing,
    UnavailableError,
    ensure_installed,
    keep_log,
    syncthing_pair,
    syncthing_version,
    wait_for,
)
from bench.w6_fanout import cpu_seconds
from replicas.home import Home
from replicas.vault import init_vault

NAME = "w4_files"
KIB, MIB = 1024, 1024 * 1024
PER_DIR = 100
POLL_S = 0.05
PACE = 4
CHUNK = MIB
WARMUP = "warmup.txt"
SYSTEMS = ("syncthing", "shoal", "restic")


@dataclass(frozen=True)
class Workload:
    key: str
    count: int
    size: int
    unit: str  # "MB/s" or "files/s"
    goal: float

    @property
    def total(self) -> int:
        return self.count * self.size

    @property
    def title(self) -> str:
        if self.count == 1:
            return f"{self.key.upper()} 1 x {self.size // MIB} MiB"
        return f"{self.key.upper()} {self.count:,} x {self.size // KIB} KiB"

    def rate(self, seconds: float) -> float:
        if self.unit == "files/s":
            return self.count / seconds
        return self.total / 1e6 / seconds

    def paths(self) -> list[str]:
        if self.count == 1:
            return ["big.bin"]
        return [f"d{i // PER_DIR:03d}/f{i:05d}.bin" for i in range(self.count)]


FULL = {
    "w4a": Workload("w4a", 1_000, 64 * KIB, "MB/s", 1.0),
    "w4b": Workload("w4b", 10_000, 4 * KIB, "files/s", 2.0),
    "w4c": Workload("w4c", 1, 256 * MIB, "MB/s", 0.5),
}
QUICK = {
    "w4a": Workload("w4a", 200, 64 * KIB, "MB/s", 1.0),
    "w4b": Workload("w4b", 2_000, 4 * KIB, "files/s", 2.0),
    "w4c": Workload("w4c", 1, 32 * MIB, "MB/s", 0.5),
}

Manifest = dict[str, tuple[int, bytes]]
"""Relative path -> (size, SHA-256) of every file of a workload."""


# --- workloads ------------------------------------------------------------------------------------


def stage(work: Workload, root: Path) -> Manifest:
    """Write the workload under ``root`` (same bytes every run) and flush it to the disk."""
    rng = random.Random(f"shoal-w4-{work.key}-{work.count}-{work.size}")
    manifest: Manifest = {}
    for rel in work.paths():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            left = work.size
            while left:
                piece = rng.randbytes(min(CHUNK, left))
                digest.update(piece)
                f.write(piece)
                left -= len(piece)
        manifest[rel] = (work.size, digest.digest())
    os.sync()
    return manifest


def move_in(staged: Path, target: Path, manifest: Manifest) -> None:
    """The timed write: make the sub-folders, rename every file in (each appears whole)."""
    for rel in manifest:
        dest = target / rel
        if not dest.parent.exists():
            dest.parent.mkdir(parents=True)
        os.rename(staged / rel, dest)


_RETIRED: list[Path] = []


def retire(path: Path, work: Workload) -> None:
    """Remove a run's tree, or only set it aside until the workload's rounds are done.

    ext4 (as mounted here) avoids reusing an inode freed in the last minute or more, and
    each allocation skips past every such inode, reading its block: after a round deleted
    its tens of thousands of files, the next round's new files cost up to ~0.4 ms of kernel
    time each (perf of B's mirror: ``find_get_block_common``, ``recently_deleted``), and
    W4b's mirror took 1.7 to 5.4 s of system time from one round to the next. A rename
    frees nothing. The one-file workload is removed at once (it would keep GBs around)."""
    if work.count == 1 or not path.exists():
        shutil.rmtree(path, ignore_errors=True)
        return
    aside = path.with_name(f"{path.name}.retired-{len(_RETIRED)}")
    path.rename(aside)
    _RETIRED.append(aside)


def remove_retired() -> None:
    while _RETIRED:
        shutil.rmtree(_RETIRED.pop(), ignore_errors=True)


def file_sha256(path: str | Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").digest()
    except OSError:
        return None


def wait_complete(
    folder: Path, manifest: Manifest, timeout: float, tick: Callable[[], None] | None = None
) -> tuple[float | None, int]:
    """Poll ``folder`` until it holds every file byte-exact.

    Returns the moment (``now()``) the last file was seen at its full size (its hash then
    matched), or None on timeout, and how many files were complete.

    The harness shares the two cores with the systems it times, so it must stay light: paths
    are plain strings made once, and after each sweep it rests at least ``PACE`` times as long
    as the sweep took (with 10,000 files pending, sweeping every ``POLL_S`` through pathlib
    kept most of a core busy). Pending files shrink as they arrive, so the last ones are seen
    within ``POLL_S``: the end time stays precise.
    """
    pending = {os.path.join(folder, rel): entry for rel, entry in manifest.items()}
    last = 0.0
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        for path, (size, digest) in list(pending.items()):
            seen = now()
            try:
                if os.stat(path).st_size != size:
                    continue
            except OSError:
                continue
            if file_sha256(path) == digest:
                del pending[path]
                last = max(last, seen)
        if tick is not None:
            tick()
        if not pending:
            return last, len(manifest)
        if time.monotonic() > deadline:
            return None, len(manifest) - len(pending)
        time.sleep(max(POLL_S, PACE * (time.monotonic() - started)))


def family(pids: list[int]) -> set[int]:
    """These processes and all their descendants (Syncthing works in a child process)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, grew = set(pids), True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of these processes and their descendants."""
    return sum(cpu_seconds(pid) for pid in family(pids))


def peak_rss_mb(pid: int) -> float:
    """The largest peak RSS (``VmHWM``) among a process and its descendants, in MB."""
    return max((vm_hwm_kib(p) for p in family([pid])), default=0) / 1024


def warm_up(dir_a: Path, dir_b: Path, kick: Callable[[], None] | None = None) -> None:
    """Sync a one-byte file A -> B, untimed: both sides connected, shared, watching."""
    (dir_a / WARMUP).write_bytes(b"w")
    if kick is not None:
        kick()
    wait_for("the warm-up file to reach B", (dir_b / WARMUP).exists, 120)


def describe_folder(folder: Path, limit: int = 5) -> str:
    """What a folder holds, for a diagnosis: file count and a few names."""
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return f"{len(names)} files ({', '.join(names[:limit])}{', ...' if len(names) > limit else ''})"


def timed_transfer(
    work: Workload,
    staged: Path,
    manifest: Manifest,
    dir_a: Path,
    dir_b: Path,
    timeout: float,
    pids: Callable[[], dict[str, int]],
    after_write: Callable[[], None] | None = None,
    tick: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Move the workload into A, wait for B; seconds, CPU of the system's processes, checks."""
    cpu0 = {name: tree_cpu([pid]) for name, pid in pids().items()}
    t0 = now()
    move_in(staged, dir_a, manifest)
    t_written = now()
    if after_write is not None:
        after_write()
    end, done = wait_complete(
        dir_b, manifest, timeout, None if tick is None else (lambda: tick(t0))
    )
    cpu1 = {name: tree_cpu([pid]) for name, pid in pids().items()}
    rss = {name: peak_rss_mb(pid) for name, pid in pids().items()}
    result: dict[str, Any] = {
        "files": work.count,
        "bytes": work.total,
        "write_s": t_written - t0,
        "complete": end is not None,
        "files_complete": done,
        "cpu_s": sum(cpu1.values()) - sum(cpu0.values()),
        "cpu_by_process": {name: cpu1[name] - cpu0.get(name, 0.0) for name in cpu1},
        "peak_rss_mb": rss,
    }
    if end is None:
        result["error"] = (
            f"timed out after {timeout:.0f} s: {done:,}/{work.count:,} files byte-exact on B; "
            f"B holds {describe_folder(dir_b)}"
        )
        return result
    result["seconds"] = end - t0
    result["rate"] = work.rate(end - t0)
    return result


# --- Syncthing ------------------------------------------------------------------------------------


def run_syncthing(
    pair: tuple[Syncthing, Syncthing], work: Workload, tmp: Path, timeout: float
) -> dict[str, Any]:
    a, b = pair
    folder_id = f"bench-{work.key}-{secrets.token_hex(4)}"  # fresh: no index left from a round
    dir_a, dir_b, staged = tmp / "st-dir-a", tmp / "st-dir-b", tmp / "st-stage"
    progress(f"{work.title}: staging for Syncthing")
    manifest = stage(work, staged)
    for node, path in ((a, dir_a), (b, dir_b)):
        node.add_folder(folder_id, path, [a.device_id, b.device_id])
    try:
        wait_for(
            "the Syncthing folders to be idle",
            lambda: all(n.folder_status(folder_id)["state"] == "idle" for n in (a, b)),
        )
        warm_up(dir_a, dir_b, lambda: a.scan(folder_id))
        wait_for(
            "Syncthing to be idle after the warm-up",
            lambda: all(n.folder_status(folder_id)["state"] == "idle" for n in (a, b)),
        )
        progress(f"{work.title}: Syncthing A -> B")
        reported: dict[str, float] = {}

        def tick(t0: float) -> None:
            reported["t0"] = t0
            indexed = "a_indexed_s" in reported
            if not indexed and a.folder_status(folder_id)["localFiles"] >= work.count + 1:
                reported["a_indexed_s"] = now() - t0
            if "rest_s" not in reported:
                status = b.folder_status(folder_id)
                if status["localFiles"] >= work.count + 1 and status["needFiles"] == 0:
                    reported["rest_s"] = now() - t0

        result = timed_transfer(
            work,
            staged,
            manifest,
            dir_a,
            dir_b,
            timeout,
            lambda: {n.name: n.proc.pid for n in (a, b) if n.proc is not None},
            after_write=lambda: a.scan(folder_id),
            tick=tick,
        )
        deadline = time.monotonic() + 10
        while result["complete"] and "rest_s" not in reported and time.monotonic() < deadline:
            tick(reported["t0"])  # B's folder is complete: how long until Syncthing says so
            time.sleep(POLL_S)
        reported.pop("t0", None)
        result.update(reported)
        result["b_status"] = {
            k: v
            for k, v in b.folder_status(folder_id).items()
            if k in ("globalFiles", "localFiles", "needFiles", "needBytes", "state")
        }
        return result
    finally:
        for node in (a, b):
            node.remove_folder(folder_id)
        for path in (dir_a, dir_b, staged):
            retire(path, work)


# --- shoal ----------------------------------------------------------------------------------------


def shoal_files_missing() -> list[str]:
    """The ``shoal serve`` options this benchmark needs that the CLI does not have (yet)."""
    done = subprocess.run(
        [*shoal_command(), "serve", "--help"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"`shoal serve --help` failed: {done.stderr.strip()[-500:]}")
    return [option for option in ("--watch", "--mirror") if option not in done.stdout]


def vault_files(home: Path) -> int:
    """Live files a replica's vault lists (read-only, from another process); 0 if unreadable."""
    try:
        conn = sqlite3.connect(f"file:{home / 'vault.db'}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute("SELECT count(*) FROM files WHERE deleted = 0").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def run_shoal(work: Workload, tmp: Path, timeout: float) -> dict[str, Any]:
    missing = shoal_files_missing()
    if missing:
        raise UnavailableError(
            f"`shoal serve` has no {' / '.join(missing)} option yet (the files feature, "
            "issue 4, is not in this tree): shoal not measured"
        )
    base = tmp / f"shoal-{work.key}"
    dir_a, dir_b, staged = base / "dir-a", base / "dir-b", base / "stage"
    a_home, b_home, logs = base / "a", base / "b", base / "logs"
    dir_a.mkdir(parents=True)
    dir_b.mkdir(parents=True)
    progress(f"{work.title}: staging for shoal")
    manifest = stage(work, staged)
    a = init_vault(Home(a_home), "bench-w4-a")
    add_member(a, b_home, "bench-w4-b").close()
    a.close()
    children: list[Child] = []
    try:
        relay = start_relay(base / "relay", logs / "relay")
        children.append(relay)
        serve_a = serve(a_home, relay.url(), logs / "serve-a", ("--watch", str(dir_a)))
        children.append(serve_a)
        serve_b = serve(b_home, relay.url(), logs / "serve-b", ("--mirror", str(dir_b)))
        children.append(serve_b)
        wait_for(
            "shoal A and B to connect to the relay",
            lambda: connected(serve_a.url()) and connected(serve_b.url()),
            120,
        )
        warm_up(dir_a, dir_b)
        progress(f"{work.title}: shoal A -> relay -> B")
        reported: dict[str, float] = {}
        relay_db = base / "relay" / "vaults" / f"{db_vault(a_home / 'vault.db').hex()}.db"

        def tick(t0: float) -> None:
            for key, home in (("a_indexed_s", a_home), ("b_vault_s", b_home)):
                if key not in reported and vault_files(home) >= work.count + 1:
                    reported[key] = now() - t0
            if "a_indexed_s" in reported and "relay_s" not in reported:
                with contextlib.suppress(sqlite3.Error):
                    if db_heads(relay_db) == db_heads(a_home / "vault.db"):
                        reported["relay_s"] = now() - t0

        result = timed_transfer(
            work,
            staged,
            manifest,
            dir_a,
            dir_b,
            timeout,
            lambda: dict(zip(("relay", "A", "B"), (c.proc.pid for c in children), strict=True)),
            tick=tick,
        )
        result.update(reported)
        result["relay_bytes"] = tree_bytes(base / "relay")
        files = subprocess.run(
            [*shoal_command(), "--home", str(b_home), "files", "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        if files.returncode == 0:
            with contextlib.suppress(ValueError):
                listed = json.loads(files.stdout)
                result["b_files_listed"] = len(listed) if isinstance(listed, list) else None
        return result
    finally:
        codes = [child.stop() for child in reversed(children)]
        for child, code in zip(reversed(children), codes, strict=True):
            if code not in (0, -15):
                progress(f"{' '.join(child.args[3:6])} exited {code}: {child.stderr_tail(800)}")
        for log in sorted(logs.glob("*")):
            keep_log(log, f"{work.key}-shoal-{log.name}")
        retire(base, work)


# --- restic ---------------------------------------------------------------------------------------


def run_restic(work: Workload, tmp: Path) -> dict[str, Any]:
    ensure_installed(["restic"])
    base = tmp / "restic"
    try:
        env = {
            **os.environ,
            "RESTIC_PASSWORD": "bench-w4",
            "RESTIC_REPOSITORY": str(base / "repo"),
            "RESTIC_CACHE_DIR": str(base / "cache"),
        }
        subprocess.run(["restic", "init"], capture_output=True, check=True, env=env)
        progress(f"{work.title}: staging for restic")
        stage(work, base / "src")
        progress(f"{work.title}: restic backup")
        t0 = now()
        done = subprocess.run(
            ["restic", "backup", "--json", str(base / "src")],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        seconds = now() - t0
        if done.returncode != 0:
            raise RuntimeError(f"restic backup failed: {done.stderr[-500:]}")
        summary: dict[str, Any] = {}
        for line in done.stdout.splitlines():
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if message.get("message_type") == "summary":
                    summary = message
        processed = int(summary.get("total_bytes_processed", -1))
        version = subprocess.run(
            ["restic", "version"], capture_output=True, text=True, check=False
        ).stdout
        return {
            "seconds": seconds,
            "rate": work.total / 1e6 / seconds,
            "bytes_processed": processed,
            "data_added": summary.get("data_added"),
            "complete": processed == work.total,
            "version": " ".join(version.split()[:2]),
        }
    finally:
        retire(base, work)


# --- the benchmark --------------------------------------------------------------------------------


def attempt(label: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one system on one workload; a failure is recorded, not raised."""
    try:
        return run()
    except UnavailableError as exc:
        progress(f"{label}: {exc}")
        return {"complete": False, "unavailable": True, "error": str(exc)}
    except Exception as exc:  # reported in the result block; the other runs go on
        progress(f"{label}: {type(exc).__name__}: {exc}")
        return {"complete": False, "error": f"{type(exc).__name__}: {exc}"}


def best(kept: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The faster complete run of two rounds, with every round's seconds and errors."""
    seconds = [*(kept or {}).get("rounds_s", []), new.get("seconds")]
    errors = [*(kept or {}).get("round_errors", [])]
    if not new.get("complete") and not new.get("unavailable"):
        errors.append(new.get("error", "incomplete"))
    faster = kept is None or (
        new.get("complete") and (not kept.get("complete") or new["seconds"] < kept["seconds"])
    )
    chosen = new if faster else kept
    assert chosen is not None
    return {**chosen, "rounds_s": seconds, "round_errors": errors}


def figure(work: Workload, run: dict[str, Any] | None) -> str:
    if run is None:
        return "-"
    if not run.get("complete"):
        return "not run" if run.get("unavailable") else "FAILED"
    return f"{run['rate']:,.1f} {work.unit} ({run['seconds']:.2f} s)"


def compare(work: Workload, st: dict[str, Any] | None, sh: dict[str, Any] | None) -> dict[str, Any]:
    if not (st and sh and st.get("complete") and sh.get("complete")):
        return {"ratio": None, "met": None}
    ratio = sh["rate"] / st["rate"]
    return {"ratio": ratio, "met": ratio >= work.goal}


def table(works: list[Workload], results: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    header = f"{'Syncthing':<24} {'shoal':<24} {'shoal/ST':>8}  {'goal':<7} met?"
    lines = [("workload", header)]
    for work in works:
        row = results[work.key]
        ratio = row["ratio"]
        met = "-" if row["met"] is None else verdict(row["met"])
        lines.append(
            (
                work.title,
                f"{figure(work, row.get('syncthing')):<24} {figure(work, row.get('shoal')):<24} "
                f"{'-' if ratio is None else f'{ratio:.2f}':>8}  >= {work.goal:<4} {met}",
            )
        )
    return lines


def rounds_note(run: dict[str, Any]) -> str:
    """Every round's seconds when there were several, and the errors of failed rounds."""
    rounds = run.get("rounds_s", [])
    note = ""
    if len(rounds) > 1:
        shown = ", ".join("failed" if s is None else f"{s:.2f}" for s in rounds)
        note = f" [rounds: {shown} s; the best counts]"
    errors = run.get("round_errors", [])
    if errors and run.get("complete"):
        note += f" [a round failed: {errors[0]}]"
    return note


def details(works: list[Workload], results: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    lines = []
    for work in works:
        row = results[work.key]
        for system in ("syncthing", "shoal"):
            run = row.get(system)
            if run is None:
                continue
            label = f"{work.key} {system}"
            if not run.get("complete"):
                lines.append((label, run.get("error", "incomplete")))
                continue
            text = (
                f"{run['seconds']:.2f} s end to end ({run['write_s'] * 1000:.0f} ms of renames), "
                f"{run['cpu_s']:.1f} CPU s ("
                + ", ".join(f"{k} {v:.1f}" for k, v in run["cpu_by_process"].items())
                + "), peak RSS "
                + ", ".join(f"{k} {v:.0f}" for k, v in run["peak_rss_mb"].items())
                + " MB"
            )
            if "a_indexed_s" in run:
                text += f"; A had indexed every file at {run['a_indexed_s']:.2f} s"
            if "relay_s" in run:
                text += f", the relay held A's log at {run['relay_s']:.2f} s"
            if "b_vault_s" in run:
                text += f", B's vault listed every file at {run['b_vault_s']:.2f} s"
            if "rest_s" in run:
                text += f", B's /rest/db/status said complete at {run['rest_s']:.2f} s"
            if "relay_bytes" in run:
                text += f"; relay holds {run['relay_bytes'] / 1e6:.1f} MB"
            if "b_files_listed" in run:
                text += f"; `shoal files` on B lists {run['b_files_listed']}"
            lines.append((label, text + rounds_note(run)))
        restic = row.get("restic")
        if restic is not None:
            text = (
                f"{restic['rate']:,.1f} MB/s ({restic['seconds']:.2f} s, {restic['version']}, "
                "local repository, spawn to exit)"
                if restic.get("complete")
                else restic.get("error", "FAILED")
            )
            lines.append((f"{work.key} restic backup", text + rounds_note(restic)))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = parser("W4 file sync A -> B side by side with Syncthing (restic for reference)")
    p.add_argument("--only", default="w4a,w4b,w4c", help="workloads (default w4a,w4b,w4c)")
    p.add_argument(
        "--systems", default=",".join(SYSTEMS), help="syncthing,shoal,restic (default all)"
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="runs of each system, alternating; the best counts"
    )
    p.add_argument("--timeout", type=float, help="seconds per run (default 900; --quick 300)")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in sizes]
    systems = {s.strip() for s in args.systems.split(",")}
    if unknown or systems - set(SYSTEMS):
        p.error(f"unknown workload or system: {unknown or sorted(systems - set(SYSTEMS))}")
    works = [sizes[k] for k in keys]
    timeout = args.timeout or (300.0 if args.quick else 900.0)
    results: dict[str, dict[str, Any]] = {w.key: {} for w in works}
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="shoal-w4-") as tmp_name:
        tmp = Path(tmp_name)
        with contextlib.ExitStack() as stack:
            pair: tuple[Syncthing, Syncthing] | None = None
            if "syncthing" in systems:
                try:
                    progress("starting two Syncthing instances")
                    pair = stack.enter_context(syncthing_pair(tmp))
                    versions["syncthing"] = syncthing_version()
                except (UnavailableError, RuntimeError, TimeoutError, OSError) as exc:
                    progress(f"Syncthing: {exc}")
                    for work in works:
                        results[work.key]["syncthing"] = {"complete": False, "error": str(exc)}
            for work in works:
                row = results[work.key]
                runners: dict[str, Callable[[], dict[str, Any]]] = {}
                if pair is not None:
                    runners["syncthing"] = partial(run_syncthing, pair, work, tmp, timeout)
                if "shoal" in systems:
                    runners["shoal"] = partial(run_shoal, work, tmp, timeout)
                if "restic" in systems and work.key == "w4c":
                    runners["restic"] = partial(run_restic, work, tmp)
                for round_ in range(args.rounds):
                    order = list(runners) if round_ % 2 == 0 else list(reversed(runners))
                    for system in order:
                        label = f"{work.key} {system}" + (
                            f" #{round_ + 1}" if args.rounds > 1 else ""
                        )
                        row[system] = best(row.get(system), attempt(label, runners[system]))
                remove_retired()
                row.update(compare(work, row.get("syncthing"), row.get("shoal")))

    settings = (
        f"{versions.get('syncthing', 'Syncthing')}, 2 instances on 127.0.0.1, folder "
        f"sendreceive, fsWatcherDelayS={FOLDER_OPTIONS['fsWatcherDelayS']}, "
        f"rescanIntervalS={FOLDER_OPTIONS['rescanIntervalS']}, /rest/db/scan after the write; "
        "no discovery/relays/NAT/reporting/upgrades, setLowPriority=false"
    )
    lines = [
        *table(works, results),
        ("timed", "renames from a flushed staging folder into A -> B's folder byte-exact"),
        ("Syncthing", settings),
        ("shoal", "relay + `serve --watch DIR_A` on A + `serve --mirror DIR_B` on B"),
        *details(works, results),
    ]
    runs = [r for row in results.values() for s in SYSTEMS if (r := row.get(s)) is not None]
    failed = [e for r in runs for e in r["round_errors"]]
    lines.append(
        ("all runs byte-exact", "yes" if not failed else f"NO ({len(failed)} failed or timed out)")
    )
    title = "W4 file sync A -> B: shoal vs Syncthing" + (" (--quick)" if args.quick else "")
    report(
        NAME,
        title,
        lines,
        {
            "quick": args.quick,
            "workloads": {
                w.key: {"count": w.count, "size": w.size, "unit": w.unit, "goal": w.goal}
                for w in works
            },
            "results": results,
            "versions": versions,
            "syncthing_folder": FOLDER_OPTIONS,
            "syncthing_options": ST_OPTIONS,
            "met": all(row["met"] for row in results.values()),
        },
    )
    return 0 if not failed and all(r.get("complete") for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
