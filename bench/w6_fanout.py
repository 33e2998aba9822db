"""W6 fan-out: R replicas of one vault pushing concurrently through one relay.

How the load is generated (50 ``shoal serve`` processes would not fit on a small machine):
R real replica homes of one vault (a founder, the others added the way pairing does, every
one with the full roster and its unwrapped keys) are hosted by ``--procs`` load-generator
processes. Each process opens its replicas (``open_replica``: real SQLite stores, real
engines) and runs, per replica, the real protocol — a ``transport.session.Session`` over a
``replicas.node.ReplicaPort`` (accepted batches go through ``engine.accept_remote_batch``:
segment verification, storage, decryption, indexing, ``synchronous=FULL`` commits) driven by
``transport.ws.drive`` over a real WebSocket (``transport.ws.connect``, aiohttp) to a real
``shoal relay`` subprocess. What differs from ``shoal serve``: several replicas share one
event loop, local appends wake their link directly (no 0.2 s polling of the database), and
there is no reconnect (any connection that ends early is counted as an error). Local events
are written with ``Log.append_local`` (sealed, signed, stored; not indexed by the writer's
own engine).

Two runs, each on fresh copies of the homes and a fresh relay (seeded with the founder's
bootstrap by a ``shoal sync`` child process):

1. **burst** — every replica holds K events written while offline; all connect at once and
   push them. Measured: events stored by the relay per second, from the moment the
   connections open until the relay's database holds all R*K (read from the relay's
   database by the parent process); then the time until every replica holds every event
   (R*(R-1)*K deliveries).
2. **live** — all connected and idle; each replica then appends ``--rate`` events per second
   for ``--duration`` seconds (staggered evenly across replicas), each pushed as soon as it
   commits. Measured: fan-out latency, from the commit of an event on its author to the
   commit of the same event on each other replica (``CLOCK_MONOTONIC`` is shared by every
   process on the machine); p50, p99, max over all (event, receiver) pairs, plus the p99 of
   each event's first and last arrival.

Errors: connections that ended before the benchmark closed them, exceptions in the load
generators, deliveries that never happened, relay closes with a code other than 1000, and
replicas whose version vectors differ from the relay's at the end.

    .venv/bin/python -m bench.w6_fanout [--quick] [--replicas R] [--procs P] [--backlog K]
                                        [--rate E] [--duration S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from bench._common import parser, progress, report, verdict
from bench.w2_sync import (
    add_member,
    append_events,
    db_heads,
    shoal_command,
    start_relay,
)
from eventlog.accept import Outcome
from eventlog.envelope import Kind
from replicas.home import Home
from replicas.node import ReplicaPort
from replicas.vault import Replica, init_vault, open_replica
from transport.messages import CloseCode
from transport.session import Session
from transport.ws import Ending, connect, drive, sync_url

NAME = "w6_fanout"
GOAL_RATE = 20_000.0
GOAL_P99_MS = 200.0
FULL_R, QUICK_R = 50, 10
FULL_K, QUICK_K = 1_000, 2_000
DEFAULT_RATE = 1.0
FULL_DURATION, QUICK_DURATION = 10.0, 5.0
CONVERGE_CAP_S = 300.0
POLL_S = 0.01

Place = tuple[str, int]  # (author hex, seq)


# --- the load generator (one process hosting several replicas) --------------------------------


class TimedPort(ReplicaPort):
    """``ReplicaPort`` that notes when each event got committed here."""

    def __init__(self, replica: Replica, arrivals: list[tuple[int, str, int, float]], me: int):
        super().__init__(replica)
        self.replica, self.arrivals, self.me = replica, arrivals, me
        self.received = 0
        self.record = False
        self._accept = self._timed_accept

    def _timed_accept(self, raws: list[bytes]) -> int:
        outcome: Outcome = self.replica.engine.accept_remote_batch(raws)
        t = time.monotonic()
        self.received += len(outcome.accepted)
        if self.record:
            for accepted in outcome.accepted:
                event = accepted.event
                self.arrivals.append((self.me, event.author.hex(), event.seq, t))
        return len(outcome.accepted)


async def wait_file(path: Path, every: float = POLL_S) -> dict[str, Any]:
    while not path.exists():
        await asyncio.sleep(every)
    await asyncio.sleep(every)  # the writer renames into place; tolerate a slow FS anyway
    body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8") or "{}")
    return body


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value), encoding="utf-8")
    tmp.replace(path)


async def sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    run = Path(spec["run"])
    me = spec["worker"]
    indexes: list[int] = spec["indexes"]
    replicas = [open_replica(Home(Path(h))) for h in spec["homes"]]
    arrivals: list[tuple[int, str, int, float]] = []
    appends: list[tuple[str, int, float]] = []
    errors: list[str] = []
    ports = [TimedPort(r, arrivals, i) for r, i in zip(replicas, indexes, strict=True)]
    expected: dict[str, int] = spec["expected"]
    write_json(run / f"opened-{me}.json", {})
    start = await wait_file(run / "connect.json")
    stopping = False

    def converged() -> bool:
        for replica in replicas:
            for author, seq in expected.items():
                head = replica.log.head(bytes.fromhex(author))
                if head is None or head.seq < seq:
                    return False
        return True

    async def link(port: TimedPort) -> tuple[Session, Any]:
        session = Session(
            port.replica.engine.signer, port, "full", initiator=True, clock=time.monotonic
        )
        url = sync_url(spec["relay"], port.replica.log.vault_id)
        ws = await connect(http, url)
        return session, ws

    async def watch(session: Session, ws: Any, changed: asyncio.Event, who: int) -> Ending:
        try:
            ending = await drive(ws, session, changed)
        except Exception as exc:  # a bug in the generator or the protocol: count it
            errors.append(f"replica {who}: {type(exc).__name__}: {exc}")
            raise
        if not stopping:
            errors.append(f"replica {who}: connection ended: {ending.code} {ending.reason}")
        return ending

    async def appender(replica: Replica, changed: asyncio.Event, offset: float, t0: float) -> None:
        log, signer, keyring = replica.log, replica.engine.signer, replica.engine.keyring
        epoch = keyring.current_epoch
        rate, count = spec["rate"], spec["per_replica"]
        filler = "x" * 100
        for k in range(count):
            await sleep_until(t0 + offset + k / rate)
            outcome = log.append_local(
                signer, keyring, Kind.DATA, epoch, {"t": "bench.note", "n": k, "text": filler}
            )
            t = time.monotonic()
            appends.append((signer.public.hex(), outcome.accepted[0].event.seq, t))
            changed.set()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await sleep_until(start["t_connect"])
        changes = [asyncio.Event() for _ in replicas]
        links = await asyncio.gather(*(link(p) for p in ports))
        tasks = [
            asyncio.create_task(watch(s, ws, c, i))
            for (s, ws), c, i in zip(links, changes, indexes, strict=True)
        ]
        while not all(s.have_received for s, _ in links) and not errors:
            await asyncio.sleep(POLL_S)
        write_json(run / f"ready-{me}.json", {"t": time.monotonic()})
        appenders: list[asyncio.Task[None]] = []
        if spec["mode"] == "live":
            go = await wait_file(run / "go.json")
            for port in ports:
                port.record = True
            total = spec["replicas"]
            for replica, changed, i in zip(replicas, changes, indexes, strict=True):
                offset = (i / total) / spec["rate"]
                appenders.append(
                    asyncio.create_task(appender(replica, changed, offset, go["t_start"]))
                )
        while not converged():
            if (run / "stop.json").exists():
                break
            await asyncio.sleep(POLL_S * 5)
        else:
            write_json(run / f"converged-{me}.json", {"t": time.monotonic()})
        for task in appenders:
            if not task.done():
                errors.append("an appender had not finished")
                task.cancel()
        await wait_file(run / "stop.json")
        stopping = True
        for _, ws in links:
            await ws.close(code=int(CloseCode.NORMAL), message=b"benchmark done")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                errors.append(f"task failed: {r!r}")
    heads = [{a.hex(): s for a, s in db_heads(Path(h) / "vault.db").items()} for h in spec["homes"]]
    for replica in replicas:
        replica.close()
    return {
        "worker": me,
        "arrivals": arrivals,
        "appends": appends,
        "errors": errors,
        "received": sum(p.received for p in ports),
        "heads": heads,
    }


def worker_entry(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    result = asyncio.run(run_worker(spec))
    write_json(Path(spec["run"]) / f"result-{spec['worker']}.json", result)
    return 0


# --- the parent: homes, relay, orchestration ----------------------------------------------------


def build_template(root: Path, count: int) -> list[Path]:
    """``count`` homes of one vault, each with the whole roster and its keys."""
    homes = [root / f"r{i:02d}" for i in range(count)]
    founder = init_vault(Home(homes[0]), "w6-r00")
    for i, home in enumerate(homes[1:], start=1):
        add_member(founder, home, f"w6-r{i:02d}").close()
    raws = [row.raw for row in founder.store.events_after(0, 10**9)]
    founder.close()
    for home in homes[1:]:
        replica = open_replica(Home(home))
        replica.engine.accept_remote_batch(raws)  # the later members' member.add events
        replica.close()
    return homes


def relay_count(db: Path) -> int:
    try:
        return sum(db_heads(db).values())
    except sqlite3.Error:
        return 0


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def wait_files(run: Path, prefix: str, count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(run.glob(f"{prefix}-*.json"))
        if len(found) >= count:
            return [json.loads(p.read_text(encoding="utf-8")) for p in found]
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(found)}/{count} workers wrote {prefix}")
        time.sleep(POLL_S)


def one_run(mode: str, template: list[Path], tmp: Path, args: Any, backlog: int) -> dict[str, Any]:
    """One run (``burst`` or ``live``) on fresh copies of the homes and a fresh relay."""
    run = tmp / mode
    homes = [run / "homes" / h.name for h in template]
    for src, dst in zip(template, homes, strict=True):
        shutil.copytree(src, dst)
    relay = start_relay(run / "relay", run / "logs" / "relay")
    workers: list[subprocess.Popen[bytes]] = []
    out: dict[str, Any] = {"mode": mode}
    try:
        url = relay.url()
        seed = subprocess.run(
            [*shoal_command(), "--home", str(homes[0]), "sync", url, "--json"],
            capture_output=True,
            check=True,
        )
        out["seeded"] = json.loads(seed.stdout)["sent"]
        vault_hex = next(iter((run / "relay" / "vaults").glob("*.db"))).stem
        relay_db = run / "relay" / "vaults" / f"{vault_hex}.db"
        expected = {a.hex(): s for a, s in db_heads(homes[0] / "vault.db").items()}
        per_replica = round(args.rate * args.duration) if mode == "live" else 0
        for home in homes:
            author = Home(home).signer().public.hex()
            expected[author] = expected.get(author, 0) + (backlog or per_replica)
        if backlog:
            progress(f"{mode}: writing {backlog:,} offline events on each of {len(homes)} replicas")
            for home in homes:
                replica = open_replica(Home(home))
                append_events(replica, backlog)
                replica.close()
        base_relay = relay_count(relay_db)
        target_relay = sum(expected.values())
        procs = min(args.procs, len(homes))
        for w in range(procs):
            mine = list(range(w, len(homes), procs))
            spec = {
                "run": str(run),
                "worker": w,
                "relay": url,
                "mode": mode,
                "indexes": mine,
                "homes": [str(homes[i]) for i in mine],
                "expected": expected,
                "replicas": len(homes),
                "rate": args.rate,
                "per_replica": per_replica,
            }
            spec_path = run / f"spec-{w}.json"
            write_json(spec_path, spec)
            with open(run / "logs" / f"worker-{w}.err", "wb") as err:
                workers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "bench.w6_fanout", "--worker", str(spec_path)],
                        stderr=err,
                    )
                )
        wait_files(run, "opened", procs, 120)
        t_connect = time.monotonic() + 0.2
        write_json(run / "connect.json", {"t_connect": t_connect})
        cap = CONVERGE_CAP_S
        if mode == "burst":
            progress(f"burst: {len(homes)} replicas push {backlog * len(homes):,} events")
            samples = [(t_connect, base_relay)]
            deadline = time.monotonic() + cap
            while samples[-1][1] < target_relay and time.monotonic() < deadline:
                time.sleep(POLL_S)
                samples.append((time.monotonic(), relay_count(relay_db)))
            out["relay_all_s"] = samples[-1][0] - t_connect
            out["relay_stored"] = samples[-1][1] - base_relay
            out["relay_events_per_s"] = out["relay_stored"] / out["relay_all_s"]
            out["relay_peak_1s"] = peak_rate(samples, 1.0)
            progress(
                f"burst: relay stored {out['relay_stored']:,} in {out['relay_all_s']:.2f} s; "
                "waiting for the fan-out to complete"
            )
        else:
            wait_files(run, "ready", procs, 120)
            t_start = time.monotonic() + 0.5
            write_json(run / "go.json", {"t_start": t_start})
            progress(
                f"live: {len(homes)} replicas x {args.rate:g} events/s for {args.duration:g} s"
            )
            cap = args.duration + CONVERGE_CAP_S
        try:
            done = wait_files(run, "converged", procs, cap)
            out["converged_s"] = max(d["t"] for d in done) - t_connect
            out["converged"] = True
        except TimeoutError as exc:
            progress(f"{mode}: {exc}")
            out["converged"] = False
        write_json(run / "stop.json", {})
        for proc in workers:
            proc.wait(120)
        results = [
            json.loads((run / f"result-{w}.json").read_text(encoding="utf-8")) for w in range(procs)
        ]
        relay_heads = {a.hex(): s for a, s in db_heads(relay_db).items()}
        m = metrics(url)
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
        relay.stop()
    errors = [e for r in results for e in r["errors"]]
    errors += [f"worker {w} exited {p.returncode}" for w, p in enumerate(workers) if p.returncode]
    closes = {
        k.split('code="')[1].rstrip('"}'): v
        for k, v in m.items()
        if k.startswith("shoal_relay_connections_closed_total")
    }
    errors += [
        f"relay closed {int(v)} connections with code {c}" for c, v in closes.items() if c != "1000"
    ]
    diverged = sum(1 for r in results for h in r["heads"] if h != relay_heads)
    if diverged:
        errors.append(f"{diverged} replicas differ from the relay at the end")
    if relay_heads != expected:
        errors.append("the relay does not hold exactly the expected events")
    out["received"] = sum(r["received"] for r in results)
    out["relay_closes"] = closes
    out["errors"] = errors
    if mode == "live":
        out.update(latency(results, len(homes)))
        out["lost"] = out.pop("missing")
        if out["lost"]:
            errors.append(f"{out['lost']} deliveries never arrived")
    else:
        out["deliveries_per_s"] = out["received"] / out["converged_s"] if out["converged"] else 0
    shutil.rmtree(run / "homes", ignore_errors=True)
    return out


def peak_rate(samples: list[tuple[float, int]], window: float) -> float:
    best, j = 0.0, 0
    for i, (t, c) in enumerate(samples):
        while samples[j][0] < t - window:
            j += 1
        if j < i and t - samples[j][0] >= window * 0.5:
            best = max(best, (c - samples[j][1]) / (t - samples[j][0]))
    return best


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(results: list[dict[str, Any]], replicas: int) -> dict[str, Any]:
    sent: dict[Place, float] = {}
    for r in results:
        for author, seq, t in r["appends"]:
            sent[(author, seq)] = t
    per_event: dict[Place, list[float]] = {p: [] for p in sent}
    all_ms: list[float] = []
    for r in results:
        for _, author, seq, t in r["arrivals"]:
            key = (author, seq)
            if key in sent:
                ms = (t - sent[key]) * 1000
                per_event[key].append(ms)
                all_ms.append(ms)
    first = [min(v) for v in per_event.values() if v]
    last = [max(v) for v in per_event.values() if v]
    span = (max(sent.values()) - min(sent.values())) if sent else 0.0
    return {
        "events": len(sent),
        "append_rate": len(sent) / span if span else 0.0,
        "deliveries": len(all_ms),
        "missing": len(sent) * (replicas - 1) - len(all_ms),
        "p50_ms": pct(all_ms, 0.50),
        "p99_ms": pct(all_ms, 0.99),
        "max_ms": max(all_ms, default=float("nan")),
        "mean_ms": statistics.fmean(all_ms) if all_ms else float("nan"),
        "first_p99_ms": pct(first, 0.99),
        "last_p50_ms": pct(last, 0.50),
        "last_p99_ms": pct(last, 0.99),
    }


def main(argv: list[str] | None = None) -> int:
    p = parser("W6 many replicas pushing concurrently through one relay")
    p.add_argument("--replicas", type=int, help=f"replicas (default {FULL_R}; --quick {QUICK_R})")
    p.add_argument("--procs", type=int, default=2, help="load-generator processes (default 2)")
    p.add_argument(
        "--backlog",
        type=int,
        help=f"burst events per replica (default {FULL_K}; --quick {QUICK_K})",
    )
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="live events/s per replica")
    p.add_argument("--duration", type=float, help="live seconds (default 10; --quick 5)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return worker_entry(args.worker)
    replicas = args.replicas or (QUICK_R if args.quick else FULL_R)
    backlog = args.backlog or (QUICK_K if args.quick else FULL_K)
    args.duration = args.duration or (QUICK_DURATION if args.quick else FULL_DURATION)
    with tempfile.TemporaryDirectory(prefix="shoal-w6-") as tmp_name:
        tmp = Path(tmp_name)
        progress(f"making {replicas} replica homes of one vault")
        template = build_template(tmp / "template", replicas)
        burst = one_run("burst", template, tmp, args, backlog)
        live = one_run("live", template, tmp, args, 0)
    errors = burst["errors"] + live["errors"]
    for e in errors[:10]:
        progress(f"error: {e}")
    rate_ok = burst["relay_events_per_s"] >= GOAL_RATE
    p99_ok = live["p99_ms"] < GOAL_P99_MS
    procs = min(args.procs, replicas)
    lines = [
        (
            "load generation",
            f"{procs} processes hosting {replicas} real replicas (Session + ReplicaPort over "
            "aiohttp WebSockets) -> 1 `shoal relay` process",
        ),
        (
            "burst: relay stored",
            f"{burst['relay_events_per_s']:,.0f} events/s ({burst['relay_stored']:,} events, "
            f"{replicas} x {backlog:,}, in {burst['relay_all_s']:.2f} s; peak 1 s "
            f"{burst['relay_peak_1s']:,.0f}/s) (goal >= {GOAL_RATE:,.0f}) -> {verdict(rate_ok)}",
        ),
        (
            "burst: fan-out to all replicas",
            f"{burst['received']:,} deliveries, all converged after {burst['converged_s']:.1f} s "
            f"({burst['deliveries_per_s']:,.0f} deliveries/s)"
            if burst["converged"]
            else f"NOT converged within {CONVERGE_CAP_S:.0f} s ({burst['received']:,} deliveries)",
        ),
        (
            "live: offered load",
            f"{replicas} x {args.rate:g} events/s for {args.duration:g} s = {live['events']:,} "
            f"events ({live['append_rate']:.0f}/s achieved), {live['deliveries']:,} deliveries",
        ),
        (
            "live: fan-out latency",
            f"p50 {live['p50_ms']:.0f} ms, p99 {live['p99_ms']:.0f} ms, max "
            f"{live['max_ms']:.0f} ms (goal p99 < {GOAL_P99_MS:.0f} ms) -> {verdict(p99_ok)}",
        ),
        (
            "live: per event",
            f"first arrival p99 {live['first_p99_ms']:.0f} ms; last of {replicas - 1} arrivals "
            f"p50 {live['last_p50_ms']:.0f} ms, p99 {live['last_p99_ms']:.0f} ms",
        ),
        (
            "errors",
            f"{len(errors)} (goal 0) -> {verdict(not errors)}"
            + (f": {errors[0]}" if errors else ""),
        ),
    ]
    report(
        NAME,
        f"W6 fan-out: {replicas} replicas of one vault through one relay",
        lines,
        {
            "replicas": replicas,
            "procs": procs,
            "backlog": backlog,
            "rate": args.rate,
            "duration": args.duration,
            "quick": args.quick,
            "burst": burst,
            "live": live,
            "errors": errors,
            "goal_events_per_s": GOAL_RATE,
            "goal_p99_ms": GOAL_P99_MS,
            "met": rate_ok and p99_ok and not errors,
        },
    )
    return 0 if not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
