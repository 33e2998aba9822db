"""W1 durable local writes: ``Log.append_local`` against the sign + seal + insert limit.

Shoal: N small sealed data events appended through ``Log.append_local`` in a fresh vault,
1,000 per transaction (``store.atomic()``), WAL + ``synchronous=FULL``.

Limit, measured in the same run on the same N payloads: the raw work alone. ``author_event``
(HKDF one-time key, ChaCha20-Poly1305 seal, canonical msgpack, Ed25519 sign, BLAKE3 id) for
each event, then one plain ``executemany`` of the batch into a scratch ``events`` table with
the very same schema (made by the real migration), WAL + ``synchronous=FULL``, 1,000 rows per
transaction. What shoal adds on top is the accept path's bookkeeping (duplicate and chain
checks, head update, roster check) and one statement per event instead of one per batch.

The machine is small and shared, so the two sides are interleaved batch by batch (alternating
which goes first): a slow second of the machine costs both sides alike, and the ratio of the
summed times is stable where absolute rates are not.

    .venv/bin/python -m bench.w1_local_writes [--quick] [--n N]
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from bench._common import median, now, parser, progress, report, verdict
from eventlog.accept import now_ms
from eventlog.crypto import SigningKey, random_key
from eventlog.envelope import ZERO32, Kind
from eventlog.migrate import migrate
from eventlog.sealing import Keyring, Position, author_event
from replicas.home import Home
from replicas.vault import Replica, init_vault

NAME = "w1_local_writes"
GOAL = 0.7
BATCH = 1000
FULL_N = 50_000
QUICK_N = 5_000

Payload = dict[str, Any]


def make_payloads(n: int) -> list[Payload]:
    return [{"t": "note", "n": i, "text": "x" * 100} for i in range(n)]


class ShoalSide:
    """A fresh vault; each batch is one ``store.atomic()`` of ``append_local`` calls."""

    def __init__(self, root: Path) -> None:
        self.replica: Replica = init_vault(Home(root), "bench-w1")
        self.before = self.replica.store.event_count()

    def batch(self, payloads: list[Payload]) -> float:
        engine, log, store = self.replica.engine, self.replica.log, self.replica.store
        signer, keyring = engine.signer, engine.keyring
        epoch = keyring.current_epoch
        start = now()
        with store.atomic():
            for payload in payloads:
                log.append_local(signer, keyring, Kind.DATA, epoch, payload)
        return now() - start

    def finish(self, n: int) -> None:
        written = self.replica.store.event_count() - self.before
        self.replica.close()
        if written != n:
            raise AssertionError(f"shoal stored {written} events, expected {n}")


class LimitSide:
    """The raw work: ``author_event`` per event, one ``executemany`` + commit per batch."""

    SQL = (
        "INSERT INTO events (author, seq, id, lamport, time_ms, kind, epoch, raw)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        self.signer = SigningKey.generate()
        self.keyring = Keyring({1: random_key()})
        self.vault = random_key()
        self.conn = sqlite3.connect(root / "limit.db", isolation_level=None)
        if self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise AssertionError("scratch database is not in WAL mode")
        self.conn.execute("PRAGMA synchronous = FULL")
        migrate(self.conn, "eventlog", "eventlog.migrations")  # the same `events` table
        self.seq, self.prev = 0, ZERO32
        self.sql_s = 0.0

    def batch(self, payloads: list[Payload]) -> float:
        signer, keyring, vault = self.signer, self.keyring, self.vault
        start = now()
        rows = []
        for payload in payloads:
            self.seq += 1
            seq = self.seq
            event = author_event(
                signer, keyring, vault, Position(seq, self.prev, seq), now_ms(), Kind.DATA, 1,
                payload,
            )  # fmt: skip
            self.prev = event.id
            rows.append((signer.public, seq, event.id, seq, event.time_ms, Kind.DATA, 1, event.raw))
        t_sql = now()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(self.SQL, rows)
        self.conn.execute("COMMIT")
        end = now()
        self.sql_s += end - t_sql
        return end - start

    def finish(self, n: int) -> None:
        count = self.conn.execute("SELECT count(*) FROM events").fetchone()[0]
        self.conn.close()
        if count != n:
            raise AssertionError(f"limit stored {count} rows, expected {n}")


def main(argv: list[str] | None = None) -> int:
    p = parser("W1 durable local writes vs the sign + seal + insert limit")
    p.add_argument("--n", type=int, help=f"events (default {FULL_N:,}; --quick {QUICK_N:,})")
    args = p.parse_args(argv)
    n = args.n or (QUICK_N if args.quick else FULL_N)
    payloads = make_payloads(n)
    shoal_t: list[float] = []
    limit_t: list[float] = []
    with tempfile.TemporaryDirectory(prefix="shoal-w1-") as tmp:
        shoal, limit = ShoalSide(Path(tmp) / "shoal"), LimitSide(Path(tmp) / "limit")
        for k, first in enumerate(range(0, n, BATCH)):
            chunk = payloads[first : first + BATCH]
            if k % 2 == 0:
                limit_t.append(limit.batch(chunk))
                shoal_t.append(shoal.batch(chunk))
            else:
                shoal_t.append(shoal.batch(chunk))
                limit_t.append(limit.batch(chunk))
            if (k + 1) % 10 == 0:
                progress(f"{first + len(chunk):,}/{n:,} events")
        shoal.finish(n)
        limit.finish(n)
    shoal_rate = n / sum(shoal_t)
    limit_rate = n / sum(limit_t)
    ratio = shoal_rate / limit_rate
    batch_ratios = [lim / sh for sh, lim in zip(shoal_t, limit_t, strict=True)]
    author_us = (sum(limit_t) - limit.sql_s) / n * 1e6
    sql_us = limit.sql_s / n * 1e6
    shoal_us = sum(shoal_t) / n * 1e6
    ok = ratio >= GOAL
    report(
        NAME,
        f"W1 durable local writes ({n:,} events, {BATCH:,} per transaction)",
        [
            ("limit: author_event + executemany", f"{limit_rate:,.0f} events/s"),
            ("  author_event (seal+sign)", f"{author_us:.1f} us/event"),
            ("  executemany + commit", f"{sql_us:.1f} us/event"),
            ("shoal: Log.append_local", f"{shoal_rate:,.0f} events/s ({shoal_us:.1f} us/event)"),
            (
                "batch ratios min/median/max",
                f"{min(batch_ratios):.2f} / {median(batch_ratios):.2f} / {max(batch_ratios):.2f}",
            ),
            ("shoal / limit", f"{ratio:.2f} (goal >= {GOAL}) -> {verdict(ok)}"),
        ],
        {
            "n": n,
            "batch": BATCH,
            "quick": args.quick,
            "shoal_events_per_s": shoal_rate,
            "limit_events_per_s": limit_rate,
            "limit_author_us_per_event": author_us,
            "limit_sql_us_per_event": sql_us,
            "ratio": ratio,
            "median_batch_ratio": median(batch_ratios),
            "goal": GOAL,
            "met": ok,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
