"""W3b live editing trace: typed on A, pushed live through a relay to B, end to end.

Setup (untimed): a relay process (``shoal relay``); replica A founds a vault and creates the
document (``startContent``); B is made a member the way pairing does it. Then A and B each
run ``shoal serve --relay URL`` as processes; once both are connected and B holds A's log, the
clock starts.

Timed, from the first edit until B holds every event: the bench process opens A's home
(``open_replica``) and types the automerge-paper trace patch by patch through
``engine.edit_text`` — one pycrdt transaction per patch, coalesced by the engine into sealed,
signed ``doc.update`` events — then ``engine.flush()``. Meanwhile A's ``serve`` notices the
commits (it polls for other processes' commits every 0.2 s), pushes them to the relay, which
stores and forwards them to B's ``serve``, which verifies, stores and merges them. The clock
stops when B's version vector (read from its database) equals A's; at that moment B's
document holds every edit (events are applied in the transaction that stores them). Then
``shoal --home B cat DOC --json`` must print ``endContent`` byte for byte (``--quick``: the
first 30,000 patches, checked against plain pycrdt's text for them).

Peer, in the same run (before and after, the faster is used): plain pycrdt, one ``Doc``,
one transaction per patch, in one process — no storage, crypto or network.

Four processes share the machine's cores: the typist, A's serve, the relay and B's serve.
The end-to-end figure includes the tail after the last edit (A's serve notices the last commit
within its 0.2 s poll, then relay and B): a fixed ~0.1-0.3 s that weighs little on the full
trace (~10 s of typing) and a lot on ``--quick`` (~0.4 s of typing).

    .venv/bin/python -m bench.w3b_live_trace [--quick]
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._common import now, parser, progress, report, verdict
from bench.trace import QUICK_PATCHES, TRACE, Patch, load_trace, run_pycrdt
from bench.w2_sync import Child, add_member, db_heads, shoal_command, start_relay
from replicas.home import Home
from replicas.vault import init_vault, open_replica

NAME = "w3b_live_trace"
GOAL = 0.7
POLL_S = 0.005
TIMEOUT_S = 600.0


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/health", timeout=5) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    return body


def serve(home: Path, relay: str, logs: Path, extra: tuple[str, ...] = ()) -> Child:
    return Child(
        [
            *shoal_command(),
            "--home",
            str(home),
            "serve",
            "--relay",
            relay,
            "--listen",
            "127.0.0.1:0",
            *extra,
        ],
        "listening on http://",
        logs,
    )


def wait_until(label: str, check: Any, timeout: float = 60.0, every: float = 0.05) -> float:
    """Poll ``check()`` until true; the moment it became true (``now()``)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return now()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {label}")
        time.sleep(every)


def connected(url: str) -> bool:
    peers = health(url)["peers"]
    return bool(peers) and all(p["connected"] for p in peers)


def live_run(tmp: Path, start: str, patches: list[Patch]) -> dict[str, Any]:
    """Type on A while A, the relay and B run; seconds and what B ends with."""
    relay = start_relay(tmp / "relay", tmp / "logs" / "relay")
    children = [relay]
    try:
        a_home, b_home = tmp / "a", tmp / "b"
        a = init_vault(Home(a_home), "bench-w3b-a")
        doc = a.engine.create_doc("paper", start)
        a.engine.flush()
        add_member(a, b_home, "bench-w3b-b").close()
        a.close()
        a_db, b_db = a_home / "vault.db", b_home / "vault.db"
        serve_a = serve(a_home, relay.url(), tmp / "logs" / "serve-a")
        children.append(serve_a)
        relay_db = tmp / "relay" / "vaults" / f"{db_vault(a_db).hex()}.db"
        wait_until("A to upload its log", lambda: _exists_and(relay_db, a_db))
        serve_b = serve(b_home, relay.url(), tmp / "logs" / "serve-b")
        children.append(serve_b)
        wait_until(
            "A and B to connect", lambda: connected(serve_a.url()) and connected(serve_b.url())
        )
        wait_until("B to hold A's log", lambda: db_heads(b_db) == db_heads(a_db))
        progress(f"relay, A serve, B serve up; typing {len(patches):,} patches on A")

        replica = open_replica(Home(a_home))
        engine = replica.engine
        t0 = now()
        for pos, delete, insert in patches:
            engine.edit_text(doc, pos, delete, insert)
        engine.flush()
        t_typed = now()
        target = db_heads(a_db)
        t_end = wait_until(
            "B to receive every event",
            lambda: db_heads(b_db) == target,
            timeout=TIMEOUT_S,
            every=POLL_S,
        )
        row = replica.store.query_one(
            "SELECT count(*), coalesce(sum(size), 0) FROM event_index"
            " WHERE doc = ? AND type = 'doc.update'",
            (doc,),
        )
        replica.close()
        assert row is not None
        cat = subprocess.run(
            [*shoal_command(), "--home", str(b_home), "cat", doc.hex(), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        body = json.loads(cat.stdout)["body"]
        b_health = health(serve_b.url())
        return {
            "typed_s": t_typed - t0,
            "end_to_end_s": t_end - t0,
            "tail_s": t_end - t_typed,
            "events": int(row[0]),
            "event_bytes": int(row[1]),
            "b_body": body,
            "b_lag_events": [p["lag_events"] for p in b_health["peers"]],
        }
    finally:
        codes = [child.stop() for child in reversed(children)]
        bad = [c for c in codes if c not in (0, -15)]
        if bad:
            progress(f"a child exited with {bad}: {children[-1].stderr_tail()}")


def db_vault(db: Path) -> bytes:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM vault WHERE key = 'vault_id'").fetchone()
    finally:
        conn.close()
    return bytes(row[0])


def _exists_and(relay_db: Path, a_db: Path) -> bool:
    try:
        return relay_db.exists() and db_heads(relay_db) == db_heads(a_db)
    except sqlite3.Error:
        return False  # the relay is still creating it


def main(argv: list[str] | None = None) -> int:
    p = parser("W3b the editing trace typed on A, live through a relay to B, vs plain pycrdt")
    p.add_argument("--trace", type=Path, default=TRACE)
    args = p.parse_args(argv)
    start, end, patches = load_trace(args.trace)
    total = len(patches)
    if args.quick:
        patches = patches[:QUICK_PATCHES]
    n = len(patches)
    progress(f"trace: {total:,} patches, using {n:,}; plain pycrdt (before)")
    base_before, text = run_pycrdt(start, patches)
    expected = text if args.quick else end
    if not args.quick and text != end:
        raise AssertionError("plain pycrdt does not reproduce endContent")
    with tempfile.TemporaryDirectory(prefix="shoal-w3b-") as tmp:
        run = live_run(Path(tmp), start, patches)
    progress("plain pycrdt (after)")
    base_after, _ = run_pycrdt(start, patches)

    base_rate = n / min(base_before, base_after)
    e2e_rate = n / run["end_to_end_s"]
    typed_rate = n / run["typed_s"]
    ratio = e2e_rate / base_rate
    exact = run["b_body"].encode("utf-8") == expected.encode("utf-8")
    ok = ratio >= GOAL and exact
    target = "endContent" if not args.quick else f"pycrdt's text of the first {n:,} patches"
    report(
        NAME,
        f"W3b live trace A -> relay -> B ({n:,} of {total:,} patches)",
        [
            (
                "plain pycrdt (1 txn/patch)",
                f"{base_rate:,.0f} edits/s (before {n / base_before:,.0f}, "
                f"after {n / base_after:,.0f})",
            ),
            (
                "typing on A (edit_text + flush)",
                f"{typed_rate:,.0f} edits/s ({run['typed_s']:.2f} s)",
            ),
            (
                "end to end (first edit -> B has all)",
                f"{e2e_rate:,.0f} edits/s ({run['end_to_end_s']:.2f} s; "
                f"last event reached B {run['tail_s'] * 1000:.0f} ms after the flush)",
            ),
            ("typing alone / pycrdt", f"{typed_rate / base_rate:.2f} (no network wait)"),
            ("events pushed (doc.update)", f"{run['events']:,} ({run['event_bytes']:,} bytes)"),
            (
                "B's `shoal cat` body",
                f"{'byte-exact' if exact else 'DIFFERENT'} to {target} ({len(expected):,} chars)",
            ),
            ("end to end / pycrdt", f"{ratio:.2f} (goal >= {GOAL}) -> {verdict(ok)}"),
        ],
        {
            "patches": n,
            "quick": args.quick,
            "pycrdt_edits_per_s": base_rate,
            "pycrdt_before_s": base_before,
            "pycrdt_after_s": base_after,
            "typed_edits_per_s": typed_rate,
            "end_to_end_edits_per_s": e2e_rate,
            "ratio": ratio,
            "typed_s": run["typed_s"],
            "end_to_end_s": run["end_to_end_s"],
            "tail_s": run["tail_s"],
            "events": run["events"],
            "event_bytes": run["event_bytes"],
            "byte_exact": exact,
            "goal": GOAL,
            "met": ok,
        },
    )
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
