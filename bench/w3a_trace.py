"""W3a editing trace: the automerge-paper trace typed through shoal's local write path.

Peer, measured in the same run: plain pycrdt, one ``Doc`` with a ``Text``, one transaction per
patch (delete, then insert). Shoal: a fresh vault, ``engine.create_doc("paper", startContent)``,
then ``engine.edit_text`` per patch (each one pycrdt transaction on the live document,
coalesced into sealed, signed ``doc.update`` events by the engine), then ``engine.flush()``.
Both sides run in alternating rounds; the best of each is reported.

Then the events are checked three ways, each against ``endContent`` byte for byte (with
``--quick``, a prefix of the trace, against plain pycrdt's text for the same prefix):

1. rebuild: the vault reopened by a fresh process-level ``open_replica`` and
   ``engine.rebuild()``, which drops all derived state and re-applies every event of the log;
2. cold open: reopened again, the document loaded from its snapshot plus later events;
3. another replica: a second member (added by the founder, as pairing will) that receives
   every raw event through ``accept_remote`` and opens them with its unwrapped keys.

    .venv/bin/python -m bench.w3a_trace [--quick] [--rounds 3]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench._common import now, parser, progress, report, verdict
from bench.trace import QUICK_PATCHES, TRACE, Patch, load_trace, run_pycrdt
from eventlog.crypto import KxKey, SigningKey
from replicas.home import Home
from replicas.vault import Replica, init_vault, join_vault, open_replica

NAME = "w3a_trace"
GOAL = 0.7


def run_shoal(root: Path, start: str, patches: list[Patch]) -> tuple[float, Replica, bytes]:
    """Seconds to type the trace into a fresh vault (flushed); the open replica; the doc id."""
    replica = init_vault(Home(root), "bench-w3a")
    engine = replica.engine
    t0 = now()
    doc = engine.create_doc("paper", start)
    for pos, delete, insert in patches:
        engine.edit_text(doc, pos, delete, insert)
    engine.flush()
    elapsed = now() - t0
    return elapsed, replica, doc


def doc_events(replica: Replica, doc: bytes) -> tuple[int, int]:
    row = replica.store.query_one(
        "SELECT count(*), coalesce(sum(size), 0) FROM event_index"
        " WHERE doc = ? AND type = 'doc.update'",
        (doc,),
    )
    assert row is not None
    return int(row[0]), int(row[1])


def check(label: str, got: str, expected: str) -> bool:
    same = got.encode("utf-8") == expected.encode("utf-8")
    if not same:
        at = next(
            (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
            min(len(got), len(expected)),
        )
        progress(f"{label}: MISMATCH at char {at} (got {len(got)} chars, expected {len(expected)})")
    return same


def verify(home: Path, doc: bytes, expected: str, tmp: Path) -> dict[str, Any]:
    """The three replay checks (see the module docstring); timings in seconds."""
    out: dict[str, Any] = {}
    # 1. Fresh engine over the same log: drop derived state, re-apply every event.
    replica = open_replica(Home(home))
    t0 = now()
    applied = replica.engine.rebuild()
    body = str(replica.engine.open(doc).body)
    out["rebuild_s"] = now() - t0
    out["rebuild_events"] = applied
    out["rebuild_ok"] = check("rebuild", body, expected)
    replica.close()
    # 2. Cold open: snapshot + events after it.
    replica = open_replica(Home(home))
    t0 = now()
    body = str(replica.engine.open(doc).body)
    out["cold_open_s"] = now() - t0
    out["cold_open_ok"] = check("cold open", body, expected)
    # 3. Another member receives every raw event through the remote accept path.
    signer, kx = SigningKey.generate(), KxKey.generate()
    replica.engine.add_member(signer.public, kx.public)
    raws = [row.raw for row in replica.store.events_after(0, 10**9)]
    other = join_vault(Home(tmp / "other"), replica.log.vault_id, signer, kx, "other")
    t0 = now()
    for raw in raws:
        other.engine.accept_remote(raw)
    other.home.save_vault_keys(other.engine.adopt_keys(kx))
    body = str(other.engine.open(doc).body)
    out["other_replica_s"] = now() - t0
    out["other_replica_events"] = len(raws)
    out["other_replica_ok"] = check("other replica", body, expected)
    other.close()
    replica.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser("W3a editing trace vs plain pycrdt")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--trace", type=Path, default=TRACE)
    args = p.parse_args(argv)
    start, end, patches = load_trace(args.trace)
    total = len(patches)
    if args.quick:
        patches = patches[:QUICK_PATCHES]
    n = len(patches)
    progress(f"trace: {total:,} patches, using {n:,}")

    base_s: list[float] = []
    shoal_s: list[float] = []
    expected = end
    with tempfile.TemporaryDirectory(prefix="shoal-w3a-") as tmp_name:
        tmp = Path(tmp_name)
        kept: tuple[Path, bytes] | None = None
        for r in range(args.rounds):
            order = ("pycrdt", "shoal") if r % 2 == 0 else ("shoal", "pycrdt")
            for side in order:
                if side == "pycrdt":
                    elapsed, text = run_pycrdt(start, patches)
                    base_s.append(elapsed)
                    if args.quick:
                        expected = text
                    elif not check("plain pycrdt", text, end):
                        raise AssertionError("plain pycrdt does not reproduce endContent")
                else:
                    home = tmp / f"shoal-{r}"
                    elapsed, replica, doc = run_shoal(home, start, patches)
                    shoal_s.append(elapsed)
                    events = doc_events(replica, doc)
                    replica.close()
                    kept = (home, doc)
            progress(
                f"round {r + 1}/{args.rounds}: pycrdt {n / base_s[-1]:,.0f} edits/s, "
                f"shoal {n / shoal_s[-1]:,.0f} edits/s ({events[0]} events)"
            )
        assert kept is not None
        progress("verifying: rebuild, cold open, second replica")
        checks = verify(kept[0], kept[1], expected, tmp)

    base_rate = n / min(base_s)
    shoal_rate = n / min(shoal_s)
    ratio = shoal_rate / base_rate
    round_ratios = [b / s for b, s in zip(base_s, shoal_s, strict=True)]
    ok = ratio >= GOAL
    replay_ok = checks["rebuild_ok"] and checks["cold_open_ok"] and checks["other_replica_ok"]
    target = "endContent" if not args.quick else f"pycrdt text of the first {n:,} patches"

    def yes(flag: bool) -> str:
        return "identical" if flag else "DIFFERENT"

    report(
        NAME,
        f"W3a editing trace ({n:,} of {total:,} patches, best of {args.rounds})",
        [
            ("plain pycrdt (1 txn/patch)", f"{base_rate:,.0f} edits/s"),
            ("shoal engine.edit_text", f"{shoal_rate:,.0f} edits/s"),
            ("per-round ratios", ", ".join(f"{x:.2f}" for x in round_ratios)),
            ("events written (doc.update)", f"{events[0]:,} ({events[1]:,} bytes)"),
            (
                "rebuild -> body",
                f"{yes(checks['rebuild_ok'])} to {target} "
                f"({checks['rebuild_events']:,} events re-applied in {checks['rebuild_s']:.2f} s)",
            ),
            (
                "cold open -> body",
                f"{yes(checks['cold_open_ok'])} ({checks['cold_open_s'] * 1000:.1f} ms)",
            ),
            (
                "second replica -> body",
                f"{yes(checks['other_replica_ok'])} ({checks['other_replica_events']:,} raw "
                f"events via accept_remote in {checks['other_replica_s']:.2f} s)",
            ),
            ("shoal / pycrdt", f"{ratio:.2f} (goal >= {GOAL}) -> {verdict(ok)}"),
        ],
        {
            "patches": n,
            "quick": args.quick,
            "rounds": args.rounds,
            "pycrdt_edits_per_s": base_rate,
            "shoal_edits_per_s": shoal_rate,
            "ratio": ratio,
            "round_ratios": round_ratios,
            "events": events[0],
            "event_bytes": events[1],
            **checks,
            "replay_ok": replay_ok,
            "goal": GOAL,
            "met": ok,
        },
    )
    if not replay_ok:
        print("  REPLAY CHECK FAILED: the events do not reproduce the text")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
