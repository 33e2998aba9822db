"""W5 cold open: ``shoal status`` and opening a big document, each in a fresh process.

The vault (built once and cached under ``bench/out/``, keyed by size) holds N real events
(default 1,000,000; ``--quick`` 100,000), all written through the engine's local write path
with ``max_edits = 1`` so that every edit is its own sealed, signed ``doc.update`` event:

* one big document with D updates (default 100,000; ``--quick`` 10,000): the first D-1
  patches of the automerge-paper trace, interleaved evenly with
* ~9,000 small notes of 100 updates each (a line appended per update), 32 being edited at a
  time, which fill the rest of the log.

The build ends like a process that was killed after its last commit: the big document's last
``SNAPSHOT_EVERY - 1`` (255) updates come after its latest snapshot, the most the engine ever
has to replay when it opens a document. Nothing is lost: every event is committed.

Then, each in a separate fresh process, interleaved, one warm-up round and the median of 5:

* ``python -c pass`` (interpreter start-up: the unit of the ratios),
* ``python -c "import sqlite3 ..."`` counting the same database's events (for context),
* ``python -c "import cli"`` (what the CLI imports before it does anything),
* ``shoal --home H status`` (the CLI, wall time)            -- limit 0.3 s,
* in-process ``open_replica`` + ``replicas.inspect.status`` + ``close`` (timed inside the child),
* in-process ``open_replica`` + ``engine.open(doc)`` + ``str(body)`` -- limit 0.1 s.

"Cold" here means a fresh process each time; the OS page cache is warm (we cannot drop it).
The children run with a bytecode cache (``PYTHONPYCACHEPREFIX`` under ``bench/out/``, and
``PYTHONDONTWRITEBYTECODE`` unset), as an installed shoal would, without writing ``.pyc``
files into the source tree; ``--no-bytecode-cache`` measures the environment as it is.

    .venv/bin/python -m bench.w5_cold_open [--quick] [--rebuild]
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from bench._common import (
    OUT_DIR,
    REPO_ROOT,
    child_env,
    median,
    now,
    parser,
    progress,
    report,
    verdict,
)
from bench.trace import TRACE, Patch, load_trace, run_pycrdt
from engine.engine import SNAPSHOT_EVERY, Engine
from replicas.home import Home
from replicas.vault import init_vault, open_replica

NAME = "w5_cold_open"
STATUS_LIMIT_S = 0.3
DOC_LIMIT_S = 0.1
FULL_N, FULL_D = 1_000_000, 100_000
QUICK_N, QUICK_D = 100_000, 10_000
ACTIVE_NOTES = 32
NOTE_EVENTS = 100
BATCH = 1000
TAIL = SNAPSHOT_EVERY - 1
CACHE_VERSION = 2  # 2: events in format v2 (design note 26)
RUNS = 5

# --- the children (each runs in a fresh interpreter) --------------------------------------------

CHILD_STATUS = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from replicas import inspect
from replicas.home import Home
from replicas.vault import open_replica
t1 = time.perf_counter()
replica = open_replica(Home(Path(sys.argv[1])))
info = inspect.status(replica)
t2 = time.perf_counter()
replica.close()
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_status_s": t2 - t1, "close_s": t3 - t2,
                  "events": info["events"], "documents": info["documents"]}))
"""

CHILD_DOC = """
import hashlib, json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from replicas.home import Home
from replicas.vault import open_replica
t1 = time.perf_counter()
replica = open_replica(Home(Path(sys.argv[1])))
t2 = time.perf_counter()
live = replica.engine.open(bytes.fromhex(sys.argv[2]))
t3 = time.perf_counter()
body = str(live.body)
t4 = time.perf_counter()
# Not engine.close(): that would snapshot the document and change what the next run measures.
replica.store.close()
print(json.dumps({"import_s": t1 - t0, "open_replica_s": t2 - t1, "open_doc_s": t3 - t2,
                  "str_body_s": t4 - t3, "total_s": t4 - t1, "chars": len(body),
                  "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest()}))
"""

CHILD_SQLITE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
print(conn.execute(sys.argv[2]).fetchone()[0])
conn.close()
"""

# --- building the vault ---------------------------------------------------------------------------


def schema_key() -> str:
    """A short hash of every migration: a schema change means a new cached vault."""
    digest = hashlib.sha256()
    for package in ("eventlog.migrations", "engine.migrations"):
        for entry in sorted(resources.files(package).iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".sql"):
                digest.update(entry.name.encode() + b"\0" + entry.read_bytes())
    return digest.hexdigest()[:10]


def cache_dir(n: int, d: int) -> Path:
    return OUT_DIR / f"w5-vault-n{n}-d{d}-v{CACHE_VERSION}-{schema_key()}"


class Writer:
    """Feeds the engine: the big document's patches and the rotating small notes."""

    def __init__(self, engine: Engine, start_text: str, patches: list[Patch]) -> None:
        self.engine = engine
        self.start_text = start_text
        self.patches = patches
        self.patch = 0
        self.big: bytes | None = None
        self.notes: list[tuple[bytes | None, int]] = [(None, 0)] * ACTIVE_NOTES
        self.small = 0
        self.created_notes = 0

    def big_step(self) -> None:
        if self.big is None:
            self.big = self.engine.create_doc("big", self.start_text)
            return
        pos, delete, insert = self.patches[self.patch]
        self.patch += 1
        self.engine.edit_text(self.big, pos, delete, insert)

    def note_step(self) -> None:
        slot = self.small % ACTIVE_NOTES
        self.small += 1
        doc, count = self.notes[slot]
        if doc is None or count >= NOTE_EVENTS:
            doc = self.engine.create_doc(f"note {self.created_notes}", "")
            self.created_notes += 1
            self.notes[slot] = (doc, 1)
        else:
            self.engine.append_text(doc, f"line {count}: a few words of a note\n")
            self.notes[slot] = (doc, count + 1)


def write_log(home: Home, n: int, d: int, start_text: str, patches: list[Patch]) -> Writer:
    """Every event through the engine, ``max_edits = 1``, 1,000 per transaction."""
    replica = init_vault(home, "bench-w5")
    store = replica.store
    replica.engine.max_edits = 1  # every edit is one event
    base = store.event_count()
    steps, big_steps = n - base - TAIL, d - TAIL
    if big_steps < 1 or steps < big_steps:
        raise SystemExit("vault too small for the big document")
    writer = Writer(replica.engine, start_text, patches)
    every = max(BATCH, (n // 20) // BATCH * BATCH)
    t0 = now()
    for first in range(0, steps, BATCH):
        with store.atomic():
            for j in range(first, min(first + BATCH, steps)):
                # Spread the big document's updates evenly through the log.
                if (j + 1) * big_steps // steps > j * big_steps // steps:
                    writer.big_step()
                else:
                    writer.note_step()
        done = min(first + BATCH, steps)
        if done % every == 0 or done == steps:
            rate = done / (now() - t0)
            progress(
                f"built {base + done:,}/{n:,} events ({rate:,.0f} events/s, "
                f"~{(steps - done) / rate:,.0f} s left; then {TAIL} more)"
            )
    replica.close()  # clean close: every live document is snapshotted
    # The tail: TAIL more updates of the big document after its snapshot, then the process
    # "dies": the store is closed without the engine's closing snapshot. All is committed.
    replica = open_replica(home)
    replica.engine.max_edits = 1
    writer.engine = replica.engine
    with replica.store.atomic():
        for _ in range(TAIL):
            writer.big_step()
    replica.store.close()
    return writer


def build(root: Path, n: int, d: int) -> dict[str, Any]:
    """Write and check the vault (see the module docstring); returns meta.json's content."""
    start_text, _, patches = load_trace(TRACE)
    if d - 1 > len(patches):
        raise SystemExit(f"the trace has only {len(patches):,} patches; --d must be <= that + 1")
    home = Home(root / "home")
    t0 = now()
    writer = write_log(home, n, d, start_text, patches)
    build_s = now() - t0
    assert writer.big is not None
    progress("checking the built vault and computing the expected text with plain pycrdt")
    _, expected = run_pycrdt(start_text, patches[: writer.patch])
    conn = sqlite3.connect(home.db_path)
    events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    big_events, since = conn.execute(
        "SELECT events, since_snapshot FROM docs WHERE doc = ?", (writer.big,)
    ).fetchone()
    docs = conn.execute("SELECT count(*) FROM docs").fetchone()[0]
    conn.close()
    if events != n or big_events != d or since != TAIL:
        raise AssertionError(
            f"built vault is off: {events} events (want {n}), big document {big_events} "
            f"updates (want {d}), {since} after its snapshot (want {TAIL})"
        )
    meta = {
        "n": n,
        "d": d,
        "doc": writer.big.hex(),
        "documents": docs,
        "after_snapshot": since,
        "expected_chars": len(expected),
        "expected_sha256": hashlib.sha256(expected.encode("utf-8")).hexdigest(),
        "build_s": build_s,
        "db_bytes": home.db_path.stat().st_size,
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def get_vault(n: int, d: int, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    root = cache_dir(n, d)
    meta_path = root / "meta.json"
    if meta_path.exists() and not rebuild:
        progress(f"using the cached vault in {root.relative_to(REPO_ROOT)}")
        return root / "home", json.loads(meta_path.read_text(encoding="utf-8"))
    if root.exists():
        shutil.rmtree(root)  # an interrupted build, or --rebuild
    root.mkdir(parents=True)
    progress(f"building a vault of {n:,} events in {root.relative_to(REPO_ROOT)} (cached)")
    return root / "home", build(root, n, d)


# --- measuring ------------------------------------------------------------------------------------


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of one fresh process, and its stdout (it must succeed)."""
    t0 = now()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = now() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed, proc.stdout


def measure(
    commands: dict[str, list[str]], env: dict[str, str], runs: int, n: int, meta: dict[str, Any]
) -> tuple[dict[str, list[float]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Every command once per round (round 0 is a warm-up), checking what each prints."""
    wall: dict[str, list[float]] = {k: [] for k in commands}
    inner_status: list[dict[str, Any]] = []
    inner_doc: list[dict[str, Any]] = []
    for r in range(runs + 1):
        for key, cmd in commands.items():
            elapsed, stdout = run(cmd, env)
            if key in ("sqlite_count", "sqlite_heads") and int(stdout) != n:
                raise AssertionError(f"{key}: {stdout.strip()} events, expected {n}")
            if key == "cli_status" and not re.search(rf"\bevents\s+({n}|{n:,})\b", stdout):
                raise AssertionError(f"shoal status did not report {n} events:\n{stdout}")
            if key == "status_child":
                info = json.loads(stdout)
                if info["events"] != n:
                    raise AssertionError(f"status reported {info['events']} events")
                if r:
                    inner_status.append(info)
            if key == "doc_child":
                info = json.loads(stdout)
                if info["sha256"] != meta["expected_sha256"]:
                    raise AssertionError("the opened document differs from plain pycrdt's text")
                if r:
                    inner_doc.append(info)
            if r:  # round 0 is the warm-up
                wall[key].append(elapsed)
        progress(f"{'warm-up' if r == 0 else f'run {r}/{runs}'} done")

    return wall, inner_status, inner_doc


def main(argv: list[str] | None = None) -> int:
    p = parser("W5 cold open: status and a big document in fresh processes")
    p.add_argument("--n", type=int, help=f"events (default {FULL_N:,}; --quick {QUICK_N:,})")
    p.add_argument("--d", type=int, help=f"big-document updates ({FULL_D:,}; {QUICK_D:,})")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached vault")
    p.add_argument("--runs", type=int, default=RUNS, help=f"timed runs each (default {RUNS})")
    p.add_argument(
        "--no-bytecode-cache",
        dest="bytecode_cache",
        action="store_false",
        help="run the children with the environment as it is (maybe no .pyc files)",
    )
    args = p.parse_args(argv)
    n = args.n or (QUICK_N if args.quick else FULL_N)
    d = args.d or (QUICK_D if args.quick else FULL_D)
    home, meta = get_vault(n, d, args.rebuild)
    db = str(home / "vault.db")
    env = child_env(args.bytecode_cache)
    py = sys.executable
    shoal = str(Path(py).parent / "shoal")
    commands: dict[str, list[str]] = {
        "python": [py, "-c", "pass"],
        "sqlite_count": [py, "-c", CHILD_SQLITE, db, "SELECT count(*) FROM events"],
        "sqlite_heads": [py, "-c", CHILD_SQLITE, db, "SELECT sum(seq) FROM heads"],
        "import_cli": [py, "-c", "import cli"],
        "cli_status": [shoal, "--home", str(home), "status"],
        "status_child": [py, "-c", CHILD_STATUS, str(home)],
        "doc_child": [py, "-c", CHILD_DOC, str(home), meta["doc"]],
    }
    wall, inner_status, inner_doc = measure(commands, env, args.runs, n, meta)
    med = {k: median(v) for k, v in wall.items()}
    st_open = median([x["open_status_s"] for x in inner_status])
    st_close = median([x["close_s"] for x in inner_status])
    st_import = median([x["import_s"] for x in inner_status])
    doc_total = median([x["total_s"] for x in inner_doc])
    doc_replica = median([x["open_replica_s"] for x in inner_doc])
    doc_open = median([x["open_doc_s"] for x in inner_doc])
    doc_str = median([x["str_body_s"] for x in inner_doc])
    doc_import = median([x["import_s"] for x in inner_doc])
    base = med["python"]
    status_ok = med["cli_status"] < STATUS_LIMIT_S
    doc_ok = doc_total < DOC_LIMIT_S

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:7.1f} ms"

    def x_py(key: str) -> str:
        return f"{ms(med[key])}  ({med[key] / base:4.1f}x python start-up)"

    report(
        NAME,
        f"W5 cold open ({n:,} events, {meta['documents']:,} documents, big document of "
        f"{d:,} updates; median of {args.runs} fresh processes)",
        [
            ("python -c pass", x_py("python")),
            ("python + sqlite3 count(*) events", x_py("sqlite_count")),
            ("python + sqlite3 sum(heads.seq)", x_py("sqlite_heads")),
            ("python -c 'import cli'", x_py("import_cli")),
            ("shoal status (CLI, wall)", x_py("cli_status")),
            ("  in-process imports", ms(st_import)),
            ("  in-process open_replica + status", ms(st_open)),
            ("  in-process close", ms(st_close)),
            ("doc open child (wall)", x_py("doc_child")),
            ("  in-process imports", ms(doc_import)),
            ("  open_replica", ms(doc_replica)),
            (f"  engine.open (snapshot + {meta['after_snapshot']} updates)", ms(doc_open)),
            (f"  str(body) ({meta['expected_chars']:,} chars)", ms(doc_str)),
            (
                "status: CLI wall vs limit",
                f"{med['cli_status']:.3f} s vs {STATUS_LIMIT_S} s = "
                f"{med['cli_status'] / STATUS_LIMIT_S:.2f}x limit -> {verdict(status_ok)}",
            ),
            (
                "doc open: open_replica+open+str",
                f"{doc_total:.3f} s vs {DOC_LIMIT_S} s = "
                f"{doc_total / DOC_LIMIT_S:.2f}x limit -> {verdict(doc_ok)}",
            ),
        ],
        {
            "n": n,
            "d": d,
            "quick": args.quick,
            "runs": args.runs,
            "bytecode_cache": args.bytecode_cache,
            "vault": {k: v for k, v in meta.items() if k != "expected_sha256"},
            "wall_median_s": med,
            "wall_s": wall,
            "status_inprocess_s": {"import": st_import, "open_status": st_open, "close": st_close},
            "doc_inprocess_s": {
                "import": doc_import,
                "open_replica": doc_replica,
                "open_doc": doc_open,
                "str_body": doc_str,
                "total": doc_total,
            },
            "status_ratio_to_python": med["cli_status"] / base,
            "status_limit_s": STATUS_LIMIT_S,
            "status_met": status_ok,
            "doc_open_s": doc_total,
            "doc_limit_s": DOC_LIMIT_S,
            "doc_met": doc_ok,
            "met": status_ok and doc_ok,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
