"""W6 fan-out: R replicas of one vault pushing concurrently through one relay.

How the load is generated (50 ``shoal serve`` processes would not fit on a small machine):
R real replica homes of one vault (a founder, the others added the way pairing does, each
with the full roster and its unwrapped keys) are hosted by ``--procs`` load-generator
processes. Each process opens its replicas (``open_replica``: real SQLite stores, real
engines) and runs, per replica, the real protocol — a ``transport.session.Session`` over a
``replicas.node.ReplicaPort`` (received batches go through ``engine.accept_remote_batch``:
segment verification, storage, decryption, indexing) driven by ``transport.ws.drive`` over a
real WebSocket (``transport.ws.connect``) to a real ``shoal relay`` subprocess, whose data
directory is on the machine's disk. What differs from ``shoal serve``: several replicas share
one event loop; a local append wakes its link directly (``serve`` polls the database every
0.2 s); there is no reconnect (a connection that ends early counts as an error); local events
are written with ``Log.append_local`` (sealed, signed, stored, not indexed by the writer).

The replica homes are on tmpfs (``/dev/shm``) by default: each real replica has a disk of its
own, while here R replicas would queue their ``synchronous=FULL`` commits (one per received
batch) on one shared virtual disk, a bottleneck no deployment has. ``--homes-on-disk`` puts
them on the disk anyway. The relay's database is always on the disk.

Two kinds of runs, each on fresh copies of the homes and a fresh relay (seeded with the
founder's bootstrap events by a ``shoal sync`` child process):

1. **burst** — every replica holds K events written while offline; all connect at once and
   push them. Measured: events stored by the relay per second, from the moment the
   connections open until the relay's database (polled by the parent process) holds all R*K;
   then the time until every replica holds every event (R*(R-1)*K deliveries).
2. **live**, at each offered load of ``--rates`` — connected and idle, then every replica
   appends E events per second for ``--duration`` seconds (staggered evenly), each pushed as
   soon as it commits. Measured: fan-out latency from the commit of an event on its author to
   the commit of the same event on each other replica (``CLOCK_MONOTONIC`` is shared by all
   processes of the machine): p50, p99, max over all (event, receiver) pairs, and the p99 of
   each event's first arrival (the relay path) and of its last. The verdict uses the
   nominal load, 1 event/s per replica (a sustained edit per second on every replica at
   once; the engine coalesces typing into at most 4 events/s per document).

Per run, the CPU seconds the relay and the load generators used are read from ``/proc``.

The load generators run at ``nice`` 10 (``--generator-nice``): they stand in for R other
machines, and what they do with an event after the relay sent it (R-1 replicas each verifying,
storing, decrypting and indexing it: ~9x the relay's work at R = 10) happens there, not on the
relay's CPU. Without it the relay gets ~60 % of a core on this 2-core machine and the
"relay stored" rate measures the receivers as much as the relay; the CPU shares of both are
reported either way.

Errors: connections that ended before the benchmark closed them, exceptions in the load
generators, deliveries that never happened, relay closes with a code other than 1000, and
replicas whose version vectors differ from the relay's at the end.

    .venv/bin/python -m bench.w6_fanout [--quick] [--replicas R] [--procs P] [--backlog K]
        [--rates E,E,...] [--duration S] [--runs burst,live] [--homes-on-disk]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench._common import parser, progress, report, verdict
from bench.w2_sync import Child, add_member, append_events, db_heads, shoal_command, start_relay
from eventlog.accept import Outcome
from eventlog.envelope import Kind
from replicas.home import Home
from replicas.node import ReplicaPort
from replicas.vault import Replica, init_vault, open_replica
from transport.messages import CloseCode
from transport.session import Session
from transport.ws import connect, drive, sync_url

NAME = "w6_fanout"
GOAL_RATE = 20_000.0
GOAL_P99_MS = 200.0
FULL_R, QUICK_R = 50, 10
FULL_K, QUICK_K = 1_000, 2_000
NOMINAL_RATE = 1.0
FULL_RATES, QUICK_RATES = "0.1,0.3,1", "1,3"
FULL_DURATION, QUICK_DURATION = 10.0, 5.0
CONVERGE_CAP_S = 300.0
POLL_S = 0.01
TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux
CORES = os.cpu_count() or 1

Place = tuple[str, int]  # (author hex, seq)


# --- the load generator (one process hosting several replicas) --------------------------------


class TimedPort(ReplicaPort):
    """``ReplicaPort`` that notes when each received event got committed here."""

    def __init__(self, replica: Replica, me: int) -> None:
        super().__init__(replica)
        self.replica, self.me = replica, me
        self.arrivals: list[tuple[int, str, int, float]] = []
        self.received = 0
        self.record = False
        self._accept = self._timed_accept

    def _timed_accept(self, raws: list[bytes]) -> Outcome:
        outcome: Outcome = self.replica.engine.accept_remote_batch(raws)
        t = time.monotonic()
        self.received += len(outcome.accepted)
        if self.record:
            for accepted in outcome.accepted:
                event = accepted.event
                self.arrivals.append((self.me, event.author.hex(), event.seq, t))
        return outcome


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value), encoding="utf-8")
    tmp.replace(path)


async def wait_file(path: Path) -> dict[str, Any]:
    while not path.exists():
        await asyncio.sleep(POLL_S)
    body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return body


async def sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


@dataclass
class Link:
    port: TimedPort
    session: Session
    ws: aiohttp.ClientWebSocketResponse
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[Any] | None = None


class Worker:
    """One load-generator process: its replicas, their links, what they saw."""

    def __init__(self, spec: dict[str, Any]) -> None:
        os.nice(spec["nice"])  # yield the CPU to the relay: see the module docstring
        self.spec = spec
        self.run = Path(spec["run"])
        self.me = spec["worker"]
        self.replicas = [open_replica(Home(Path(h))) for h in spec["homes"]]
        self.ports = [TimedPort(r, i) for r, i in zip(self.replicas, spec["indexes"], strict=True)]
        self.expected = {bytes.fromhex(a): s for a, s in spec["expected"].items()}
        self.links: list[Link] = []
        self.appends: list[tuple[str, int, float]] = []
        self.errors: list[str] = []
        self.stopping = False

    def converged(self) -> bool:
        for replica in self.replicas:
            for author, seq in self.expected.items():
                head = replica.log.head(author)
                if head is None or head.seq < seq:
                    return False
        return True

    async def open_link(self, http: aiohttp.ClientSession, port: TimedPort) -> Link:
        replica = port.replica
        session = Session(replica.engine.signer, port, "full", initiator=True, clock=time.monotonic)
        ws = await connect(http, sync_url(self.spec["relay"], replica.log.vault_id))
        return Link(port, session, ws)

    async def watch(self, link: Link) -> None:
        try:
            ending = await drive(link.ws, link.session, link.changed)
        except Exception as exc:  # a bug in the generator or the protocol: count it
            self.errors.append(f"replica {link.port.me}: {type(exc).__name__}: {exc}")
            return
        if not self.stopping:
            self.errors.append(f"replica {link.port.me}: ended {ending.code} {ending.reason}")

    async def appender(self, link: Link, offset: float, t0: float) -> None:
        replica = link.port.replica
        log, signer, keyring = replica.log, replica.engine.signer, replica.engine.keyring
        epoch = keyring.current_epoch
        rate, count = self.spec["rate"], self.spec["per_replica"]
        filler = "x" * 100
        for k in range(count):
            await sleep_until(t0 + offset + k / rate)
            payload = {"t": "bench.note", "n": k, "text": filler}
            outcome = log.append_local(signer, keyring, Kind.DATA, epoch, payload)
            self.appends.append(
                (signer.public.hex(), outcome.accepted[0].event.seq, time.monotonic())
            )
            link.changed.set()

    async def main(self) -> dict[str, Any]:
        write_json(self.run / f"opened-{self.me}.json", {})
        start = await wait_file(self.run / "connect.json")
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            await sleep_until(start["t_connect"])
            self.links = list(await asyncio.gather(*(self.open_link(http, p) for p in self.ports)))
            for link in self.links:
                link.task = asyncio.create_task(self.watch(link))
            while not all(link.session.have_received for link in self.links) and not self.errors:
                await asyncio.sleep(POLL_S)
            write_json(self.run / f"ready-{self.me}.json", {})
            appenders = []
            if self.spec["mode"] == "live":
                go = await wait_file(self.run / "go.json")
                total, rate = self.spec["replicas"], self.spec["rate"]
                for link in self.links:
                    link.port.record = True
                    offset = (link.port.me / total) / rate
                    appenders.append(asyncio.create_task(self.appender(link, offset, go["t"])))
            while not (self.run / "stop.json").exists():
                if self.converged():
                    write_json(self.run / f"converged-{self.me}.json", {"t": time.monotonic()})
                    break
                await asyncio.sleep(POLL_S * 5)
            await wait_file(self.run / "stop.json")
            for task in appenders:
                if not task.done():
                    self.errors.append("an appender had not finished")
                    task.cancel()
            self.stopping = True
            for link in self.links:
                await link.ws.close(code=int(CloseCode.NORMAL), message=b"benchmark done")
            await asyncio.gather(*(link.task for link in self.links if link.task))
        heads = [
            {a.hex(): s for a, s in db_heads(Path(h) / "vault.db").items()}
            for h in self.spec["homes"]
        ]
        for replica in self.replicas:
            replica.close()
        return {
            "arrivals": [a for p in self.ports for a in p.arrivals],
            "appends": self.appends,
            "errors": self.errors,
            "received": sum(p.received for p in self.ports),
            "heads": heads,
        }


def worker_entry(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    result = asyncio.run(Worker(spec).main())
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


def relay_closes(url: str) -> dict[str, int]:
    """The relay's ``shoal_relay_connections_closed_total`` by close code."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    closes = {}
    for line in text.splitlines():
        if line.startswith("shoal_relay_connections_closed_total{"):
            key, _, value = line.rpartition(" ")
            closes[key.split('code="')[1].split('"')[0]] = int(float(value))
    return closes


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (``/proc/PID/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine used so far (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / TICKS


def wait_files(run: Path, prefix: str, count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(run.glob(f"{prefix}-*.json"))
        if len(found) >= count:
            return [json.loads(p.read_text(encoding="utf-8")) for p in found]
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(found)}/{count} load generators wrote {prefix}")
        time.sleep(POLL_S)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def peak_rate(samples: list[tuple[float, int]], window: float) -> float:
    best, j = 0.0, 0
    for i, (t, c) in enumerate(samples):
        while samples[j][0] < t - window:
            j += 1
        if j < i and t - samples[j][0] >= window * 0.5:
            best = max(best, (c - samples[j][1]) / (t - samples[j][0]))
    return best


def latency(results: list[dict[str, Any]], replicas: int) -> dict[str, Any]:
    sent: dict[Place, float] = {}
    for r in results:
        for author, seq, t in r["appends"]:
            sent[(author, seq)] = t
    per_event: dict[Place, list[float]] = {p: [] for p in sent}
    all_ms: list[float] = []
    for r in results:
        for _, author, seq, t in r["arrivals"]:
            if (author, seq) in sent:
                ms = (t - sent[(author, seq)]) * 1000
                per_event[(author, seq)].append(ms)
                all_ms.append(ms)
    first = [min(v) for v in per_event.values() if v]
    last = [max(v) for v in per_event.values() if v]
    span = (max(sent.values()) - min(sent.values())) if len(sent) > 1 else 0.0
    return {
        "events": len(sent),
        "append_rate": (len(sent) - 1) / span if span else 0.0,
        "deliveries": len(all_ms),
        "lost": len(sent) * (replicas - 1) - len(all_ms),
        "p50_ms": pct(all_ms, 0.50),
        "p99_ms": pct(all_ms, 0.99),
        "max_ms": max(all_ms, default=float("nan")),
        "mean_ms": statistics.fmean(all_ms) if all_ms else float("nan"),
        "first_p99_ms": pct(first, 0.99),
        "last_p50_ms": pct(last, 0.50),
        "last_p99_ms": pct(last, 0.99),
    }


class Run:
    """One run on fresh copies of the homes, a fresh relay and fresh load generators."""

    def __init__(self, label: str, mode: str, template: list[Path], tmp: Path, args: Any) -> None:
        self.label, self.mode, self.args = label, mode, args
        self.dir = tmp / label
        self.homes_root = Path(tempfile.mkdtemp(prefix=f"shoal-w6-{label}-", dir=args.homes_dir))
        self.homes = [self.homes_root / h.name for h in template]
        for src, dst in zip(template, self.homes, strict=True):
            shutil.copytree(src, dst)
        self.relay: Child | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.procs = min(args.procs, len(self.homes))
        self.out: dict[str, Any] = {"label": label, "mode": mode}

    def start_relay(self) -> str:
        self.relay = start_relay(self.dir / "relay", self.dir / "logs" / "relay")
        url = self.relay.url()
        seed = subprocess.run(
            [*shoal_command(), "--home", str(self.homes[0]), "sync", url, "--json"],
            capture_output=True,
            check=True,
        )
        self.out["seeded"] = json.loads(seed.stdout)["sent"]
        self.relay_db = next((self.dir / "relay" / "vaults").glob("*.db"))
        return url

    def start_workers(self, url: str, expected: dict[str, int], rate: float, each: int) -> None:
        for w in range(self.procs):
            mine = list(range(w, len(self.homes), self.procs))
            spec = {
                "run": str(self.dir),
                "worker": w,
                "relay": url,
                "mode": self.mode,
                "indexes": mine,
                "homes": [str(self.homes[i]) for i in mine],
                "expected": expected,
                "replicas": len(self.homes),
                "rate": rate,
                "per_replica": each,
                "nice": self.args.generator_nice,
            }
            spec_path = self.dir / f"spec-{w}.json"
            write_json(spec_path, spec)
            with open(self.dir / "logs" / f"worker-{w}.err", "wb") as err:
                command = [sys.executable, "-m", "bench.w6_fanout", "--worker", str(spec_path)]
                self.workers.append(subprocess.Popen(command, stderr=err))
        wait_files(self.dir, "opened", self.procs, 120)

    def cpu(self) -> tuple[float, float, float]:
        """CPU seconds so far: the relay, the load generators, the whole machine."""
        assert self.relay is not None
        return (
            cpu_seconds(self.relay.proc.pid),
            sum(cpu_seconds(p.pid) for p in self.workers),
            machine_busy_seconds(),
        )

    def execute(self, backlog: int, rate: float) -> dict[str, Any]:
        try:
            url = self.start_relay()
            each = round(rate * self.args.duration) if self.mode == "live" else backlog
            expected = {a.hex(): s for a, s in db_heads(self.homes[0] / "vault.db").items()}
            for home in self.homes:
                author = Home(home).signer().public.hex()
                expected[author] = expected.get(author, 0) + each
            if self.mode == "burst":
                progress(f"{self.label}: {backlog:,} offline events on each of {len(self.homes)}")
                for home in self.homes:
                    replica = open_replica(Home(home))
                    append_events(replica, backlog)
                    replica.close()
            self.start_workers(url, expected, rate, each)
            t_connect = time.monotonic() + 0.2
            write_json(self.dir / "connect.json", {"t_connect": t_connect})
            if self.mode == "burst":
                t0, cpu0 = self.measure_burst(t_connect, sum(expected.values()))
            else:
                t0, cpu0 = self.measure_live(rate)
            self.wait_converged(t_connect)
            cpu1 = self.cpu()
            elapsed = time.monotonic() - t0
            self.out["relay_cpu_busy"] = (cpu1[0] - cpu0[0]) / elapsed
            self.out["generators_cpu_busy"] = (cpu1[1] - cpu0[1]) / elapsed
            self.out["machine_cpu_busy"] = (cpu1[2] - cpu0[2]) / elapsed / CORES
            self.out["relay_cpu_s"] = cpu1[0] - cpu0[0]
            write_json(self.dir / "stop.json", {})
            for proc in self.workers:
                proc.wait(120)
            results = [
                json.loads((self.dir / f"result-{w}.json").read_text(encoding="utf-8"))
                for w in range(self.procs)
            ]
            self.check(results, relay_closes(url), expected)
        finally:
            for proc in self.workers:
                if proc.poll() is None:
                    proc.kill()
            if self.relay is not None:
                self.relay.stop()
            shutil.rmtree(self.homes_root, ignore_errors=True)
        if self.mode == "live":
            self.out.update(latency(results, len(self.homes)))
            self.out["relay_cpu_us_per_delivery"] = (
                self.out["relay_cpu_s"] / max(1, self.out["deliveries"]) * 1e6
            )
            if self.out["lost"]:
                self.out["errors"].append(f"{self.out['lost']} deliveries never arrived")
        return self.out

    def measure_burst(
        self, t_connect: float, target: int
    ) -> tuple[float, tuple[float, float, float]]:
        base = relay_count(self.relay_db)
        progress(f"{self.label}: {len(self.homes)} replicas push {target - base:,} events")
        while time.monotonic() < t_connect:
            time.sleep(0.001)
        cpu0 = self.cpu()
        samples = [(t_connect, base)]
        deadline = t_connect + CONVERGE_CAP_S
        while samples[-1][1] < target and time.monotonic() < deadline:
            time.sleep(POLL_S)
            samples.append((time.monotonic(), relay_count(self.relay_db)))
        cpu1 = self.cpu()
        self.out["relay_all_s"] = samples[-1][0] - t_connect
        self.out["relay_stored"] = samples[-1][1] - base
        self.out["relay_events_per_s"] = self.out["relay_stored"] / self.out["relay_all_s"]
        self.out["relay_peak_1s"] = peak_rate(samples, 1.0)
        self.out["relay_cpu_busy_ingest"] = (cpu1[0] - cpu0[0]) / self.out["relay_all_s"]
        self.out["relay_cpu_us_per_event"] = (cpu1[0] - cpu0[0]) / max(1, target - base) * 1e6
        self.out["generators_cpu_busy_ingest"] = (cpu1[1] - cpu0[1]) / self.out["relay_all_s"]
        self.out["machine_cpu_busy_ingest"] = (cpu1[2] - cpu0[2]) / self.out["relay_all_s"] / CORES
        progress(
            f"{self.label}: relay stored {self.out['relay_stored']:,} in "
            f"{self.out['relay_all_s']:.2f} s; waiting for the fan-out to complete"
        )
        return t_connect, cpu0

    def measure_live(self, rate: float) -> tuple[float, tuple[float, float, float]]:
        wait_files(self.dir, "ready", self.procs, 120)
        t_start = time.monotonic() + 0.5
        write_json(self.dir / "go.json", {"t": t_start})
        progress(
            f"{self.label}: {len(self.homes)} replicas x {rate:g} events/s "
            f"for {self.args.duration:g} s"
        )
        while time.monotonic() < t_start:
            time.sleep(0.001)
        return t_start, self.cpu()

    def wait_converged(self, t_connect: float) -> None:
        try:
            done = wait_files(self.dir, "converged", self.procs, CONVERGE_CAP_S)
        except TimeoutError as exc:
            progress(f"{self.label}: {exc}")
            self.out["converged"] = False
            return
        self.out["converged_s"] = max(d["t"] for d in done) - t_connect
        self.out["converged"] = True

    def check(
        self, results: list[dict[str, Any]], closes: dict[str, int], expected: dict[str, int]
    ) -> None:
        errors = [e for r in results for e in r["errors"]]
        errors += [
            f"load generator {w} exited {p.returncode}"
            for w, p in enumerate(self.workers)
            if p.returncode
        ]
        errors += [
            f"relay closed {n} connections with {c}" for c, n in closes.items() if c != "1000"
        ]
        relay_heads = {a.hex(): s for a, s in db_heads(self.relay_db).items()}
        diverged = sum(1 for r in results for h in r["heads"] if h != relay_heads)
        if diverged:
            errors.append(f"{diverged} replicas differ from the relay at the end")
        if relay_heads != expected:
            errors.append("the relay does not hold exactly the expected events")
        if not self.out["converged"]:
            errors.append(f"not converged within {CONVERGE_CAP_S:.0f} s")
        self.out["received"] = sum(r["received"] for r in results)
        self.out["relay_closes"] = closes
        self.out["errors"] = errors
        if self.mode == "burst" and self.out["converged"]:
            self.out["deliveries_per_s"] = self.out["received"] / self.out["converged_s"]


def burst_lines(burst: dict[str, Any], replicas: int, backlog: int) -> list[tuple[str, str]]:
    ok = burst["relay_events_per_s"] >= GOAL_RATE
    fanout = (
        f"{burst['received']:,} deliveries; every replica held every event after "
        f"{burst['converged_s']:.1f} s ({burst['deliveries_per_s']:,.0f} deliveries/s)"
        if burst["converged"]
        else f"NOT converged within {CONVERGE_CAP_S:.0f} s ({burst['received']:,} deliveries)"
    )
    return [
        (
            "burst: relay stored",
            f"{burst['relay_events_per_s']:,.0f} events/s ({replicas} x {backlog:,} events in "
            f"{burst['relay_all_s']:.2f} s; best 1 s {burst['relay_peak_1s']:,.0f}/s) "
            f"(goal >= {GOAL_RATE:,.0f}) -> {verdict(ok)}",
        ),
        (
            "  CPU while ingesting",
            f"relay {burst['relay_cpu_busy_ingest']:.0%} of a core, load generators "
            f"{burst['generators_cpu_busy_ingest']:.0%} (the fan-out they receive shares the "
            f"cores), whole machine {burst['machine_cpu_busy_ingest']:.0%} of {CORES} cores; "
            f"relay CPU {burst['relay_cpu_us_per_event']:.0f} us per stored event "
            f"-> one free relay core ~ {1e6 / burst['relay_cpu_us_per_event']:,.0f} events/s "
            "(estimate)",
        ),
        ("  fan-out", fanout),
    ]


def live_lines(
    lives: list[dict[str, Any]], replicas: int, duration: float
) -> list[tuple[str, str]]:
    lines = []
    for live in lives:
        rate = live["rate"]
        nominal = " (nominal)" if rate == NOMINAL_RATE else ""
        lines.append(
            (
                f"live {rate:g}/s per replica{nominal}",
                f"{live['events']:,} events ({live['append_rate']:.0f}/s), "
                f"{live['deliveries']:,} deliveries in {duration:g} s: p50 "
                f"{live['p50_ms']:,.0f} ms, p99 {live['p99_ms']:,.0f} ms, max "
                f"{live['max_ms']:,.0f} ms; first arrival p99 {live['first_p99_ms']:,.0f} ms, "
                f"last p99 {live['last_p99_ms']:,.0f} ms; CPU relay "
                f"{live['relay_cpu_busy']:.0%} ({live['relay_cpu_us_per_delivery']:,.0f} us per "
                f"delivery), generators {live['generators_cpu_busy']:.0%}, machine "
                f"{live['machine_cpu_busy']:.0%} of {CORES} cores",
            )
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = parser("W6 many replicas pushing concurrently through one relay")
    p.add_argument("--replicas", type=int, help=f"replicas (default {FULL_R}; --quick {QUICK_R})")
    p.add_argument("--procs", type=int, default=2, help="load-generator processes (default 2)")
    p.add_argument(
        "--generator-nice",
        type=int,
        default=10,
        help="nice value of the load generators: 10 leaves the relay its core (0: share it)",
    )
    p.add_argument(
        "--backlog", type=int, help=f"burst events/replica ({FULL_K}; --quick {QUICK_K})"
    )
    p.add_argument(
        "--rates", help=f"live events/s per replica ({FULL_RATES}; --quick {QUICK_RATES})"
    )
    p.add_argument("--duration", type=float, help="seconds of each live run (10; --quick 5)")
    p.add_argument("--runs", default="burst,live", help="burst, live or both (default)")
    p.add_argument("--homes-on-disk", action="store_true", help="replica homes on the disk")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return worker_entry(args.worker)
    replicas = args.replicas or (QUICK_R if args.quick else FULL_R)
    backlog = args.backlog or (QUICK_K if args.quick else FULL_K)
    rates = [
        float(r) for r in (args.rates or (QUICK_RATES if args.quick else FULL_RATES)).split(",")
    ]
    if NOMINAL_RATE not in rates:
        rates.append(NOMINAL_RATE)
    args.duration = args.duration or (QUICK_DURATION if args.quick else FULL_DURATION)
    shm = Path("/dev/shm")
    args.homes_dir = None if args.homes_on_disk or not shm.is_dir() else str(shm)
    runs = set(args.runs.split(","))
    burst: dict[str, Any] | None = None
    lives: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shoal-w6-") as tmp_name:
        tmp = Path(tmp_name)
        progress(f"making {replicas} replica homes of one vault")
        template = build_template(tmp / "template", replicas)
        if "burst" in runs:
            burst = Run("burst", "burst", template, tmp, args).execute(backlog, 0.0)
        if "live" in runs:
            for rate in rates:
                live = Run(f"live-{rate:g}", "live", template, tmp, args).execute(0, rate)
                live["rate"] = rate
                lives.append(live)
    errors = (burst["errors"] if burst else []) + [e for live in lives for e in live["errors"]]
    for e in errors[:10]:
        progress(f"error: {e}")
    nominal = next((live for live in lives if live["rate"] == NOMINAL_RATE), None)
    rate_ok = burst is not None and burst["relay_events_per_s"] >= GOAL_RATE
    p99_ok = nominal is not None and nominal["p99_ms"] < GOAL_P99_MS
    procs = min(args.procs, replicas)
    homes = "on the disk" if args.homes_dir is None else "on tmpfs"
    lines = [
        (
            "load generation",
            f"{procs} processes at nice {args.generator_nice} hosting {replicas} real replicas"
            f" (homes {homes}; Session + ReplicaPort over aiohttp WebSockets) -> 1 `shoal relay`"
            " process (data on disk)",
        )
    ]
    if burst is not None:
        lines += burst_lines(burst, replicas, backlog)
    lines += live_lines(lives, replicas, args.duration)
    if nominal is not None:
        lines.append(
            (
                "p99 fan-out latency (nominal)",
                f"{nominal['p99_ms']:,.0f} ms at {NOMINAL_RATE:g} event/s per replica "
                f"(goal < {GOAL_P99_MS:.0f} ms) -> {verdict(p99_ok)}",
            )
        )
    lines.append(
        (
            "errors",
            f"{len(errors)} (goal 0) -> {verdict(not errors)}"
            + (f": {errors[0]}" if errors else ""),
        )
    )
    report(
        NAME,
        f"W6 fan-out: {replicas} replicas of one vault through one relay",
        lines,
        {
            "replicas": replicas,
            "procs": procs,
            "homes": homes,
            "generator_nice": args.generator_nice,
            "backlog": backlog,
            "rates": rates,
            "duration": args.duration,
            "quick": args.quick,
            "burst": burst,
            "live": lives,
            "errors": errors,
            "goal_events_per_s": GOAL_RATE,
            "goal_p99_ms": GOAL_P99_MS,
            "met": rate_ok and p99_ok and not errors,
        },
    )
    return 0 if not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
