"""A full replica on the network: one-shot sync, and the ``serve`` daemon.

``ReplicaPort`` lets the sync protocol read and write a full replica: accepted batches go
through the engine, so documents update in the same transaction. The daemon listens for LAN
peers, dials relays and peers with backoff, optionally finds peers with mDNS, pushes local
changes live (including those other ``shoal`` processes write to the same home), and reports
``/health`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from eventlog.accept import Outcome
from eventlog.crypto import SigningKey
from eventlog.errors import ShoalError
from replicas.apply_helper import START_AFTER_EVENTS, ApplyHelper
from replicas.vault import Replica
from transport.messages import CloseCode
from transport.ports import LogPortBase, member_may_connect
from transport.session import Session, Stats
from transport.ws import SYNC_PATH, Ending, connect, drive, server_socket, sync_url

if TYPE_CHECKING:
    from replicas.folder_worker import FolderWorker

log = logging.getLogger("shoal.node")

VERSION: Final = "0.1.0"
BACKOFF_MIN_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
POLL_S: Final = 0.2
"""How often the daemon looks for commits by other processes (``shoal append`` ...)."""
PUSH_GAP_S: Final = 0.05
"""The least time between two looks that found something: a poke after a quiet spell is
pushed at once, and a stream of commits (a big file's chunks, each its own) is pushed in
runs, not one sync round (and one fsync on the relay and on every peer) a commit."""


class SyncError(ShoalError):
    exit_code = 6

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class ReplicaPort(LogPortBase):
    """A full replica as the sync protocol sees it (received batches are applied as they are
    stored, unless ``accept`` says otherwise: see :class:`BulkPull`)."""

    def __init__(
        self, replica: Replica, accept: Callable[[list[bytes]], Outcome] | None = None
    ) -> None:
        super().__init__(replica.log, accept or replica.engine.accept_remote_batch)

    def may_connect(self, peer: bytes, role: str, initiator: bool) -> bool:
        if initiator and (role == "relay" or not self.log.roster):
            # We chose to dial it. A relay is no member; an empty home is bootstrapping and
            # checks everything it receives against the vault id it asked for.
            return True
        return member_may_connect(self.log, peer)


@dataclass
class BulkPull:
    """One sync's split of the work with an apply helper (``replicas.apply_helper``).

    The first ``START_AFTER_EVENTS`` events received are applied here as they are stored;
    once a pull turns out bigger, batches are only stored and the helper, started when the
    sync began so that it has booted by then, applies them. ``settle`` ends the split.
    """

    replica: Replica
    helper: ApplyHelper
    stored: int = 0
    handed_over_at: int | None = None
    """The applied mark when the helper took over (None: it never did)."""
    roster_changed: bool = False
    revoked_changed: bool = False

    def accept(self, raws: list[bytes]) -> Outcome:
        engine = self.replica.engine
        if self.handed_over_at is None and self.stored < START_AFTER_EVENTS:
            outcome = engine.accept_remote_batch(raws)
        else:
            if self.handed_over_at is None:
                self.handed_over_at = engine.applied_upto()
            outcome = self.replica.log.accept_batch(raws)
            self.roster_changed |= outcome.roster_changed
            self.revoked_changed |= outcome.revoked_changed
        self.stored += len(outcome.accepted)
        return outcome

    def settle(self) -> int:
        """Wait for the helper (or stop it, unused), apply here whatever it left, and take
        the roster's consequences; returns how many events the helper applied."""
        if self.handed_over_at is None:
            self.helper.cancel()
            return 0
        self.helper.finish()
        engine = self.replica.engine
        applied = engine.applied_upto() - self.handed_over_at
        engine.settle(self.roster_changed, self.revoked_changed)
        return applied


@dataclass
class SyncResult:
    stats: Stats
    peer: bytes | None
    peer_role: str
    peer_have: dict[bytes, tuple[int, bytes]]
    proofs: list[bytes]
    helper_applied: int = 0
    """Events a helper process applied beside the sync (``replicas.apply_helper``)."""


async def sync_once(
    replica: Replica,
    url: str,
    *,
    signer: SigningKey | None = None,
    on_stored: Callable[[int], None] | None = None,
    audit: bool = False,
    probes: Callable[[Session], list[tuple[bytes, int]]] | None = None,
    timeout: float = 600.0,
    helper: ApplyHelper | None = None,
) -> SyncResult:
    """Exchange events with one peer or relay until both hold each other's events.

    A peer that advertises events and does not send them is asked again on a fresh
    connection (its version vector exchange is the request); if the gap remains, the sync
    fails with "missing N events from <peer>" rather than reporting success. Given a started
    ``helper``, a big pull is applied by that second process while it is stored (see
    :class:`BulkPull`); every event is applied when this returns, either way.
    """
    bulk = BulkPull(replica, helper) if helper is not None else None
    port = ReplicaPort(replica, bulk.accept if bulk is not None else None)
    try:
        for attempt in range(1 + GAP_RETRIES):
            session = Session(
                signer or replica.engine.signer,
                port,
                "full",
                initiator=True,
                clock=time.monotonic,
                audit=audit,
            )
            await _sync_session(session, url, on_stored, probes, timeout)
            gaps = {} if audit else session.missing()
            if not gaps:
                break
            log.warning("sync with %s: %s (attempt %d)", url, describe_gaps(session), attempt + 1)
        else:
            raise SyncError(f"sync with {url} incomplete: {describe_gaps(session)}")
    finally:
        helper_applied = bulk.settle() if bulk is not None else 0
    return SyncResult(
        session.stats,
        session.peer,
        session.peer_role,
        session.peer_have,
        session.proofs,
        helper_applied,
    )


GAP_RETRIES: Final = 1
"""Fresh connections asking again for events a peer advertised but did not send."""


def describe_gaps(session: Session) -> str:
    """``missing N events from <role> <id>`` with the first author and seqs it lacks."""
    gaps = session.missing()
    have = session.port.version_vector()
    author, count = max(gaps.items(), key=lambda item: item[1])
    first = (have[author][0] if author in have else 0) + 1
    peer = session.peer.hex()[:12] if session.peer else "?"
    others = f" and {len(gaps) - 1} more author(s)" if len(gaps) > 1 else ""
    return (
        f"missing {sum(gaps.values())} events from {session.peer_role} {peer} "
        f"(author {author.hex()[:12]} seq {first}..{first + count - 1}{others}): "
        "advertised but not sent"
    )


async def _sync_session(
    session: Session,
    url: str,
    on_stored: Callable[[int], None] | None,
    probes: Callable[[Session], list[tuple[bytes, int]]] | None,
    timeout: float,
) -> None:
    """One connection: connect, run ``session`` until it settles (or audits), close."""
    target = sync_url(url, session.port.vault_id)
    async with aiohttp.ClientSession() as http:
        try:
            ws = await asyncio.wait_for(connect(http, target), 15)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise SyncError(f"cannot reach {url}: {exc or type(exc).__name__}") from None
        if probes is not None:
            ending = await asyncio.wait_for(_audit(ws, session, probes), timeout)
        else:
            ending = await asyncio.wait_for(
                drive(ws, session, on_stored=on_stored, until_settled=True), timeout
            )
    if ending.code != CloseCode.NORMAL:
        raise SyncError(
            f"sync with {url} failed: {ending.reason} (code {ending.code})", ending.code
        )


async def _audit(
    ws: aiohttp.ClientWebSocketResponse,
    session: Session,
    probes: Callable[[Session], list[tuple[bytes, int]]],
) -> Ending:
    """Handshake, read the peer's HAVE, ask for proofs, close (``shoal backup``)."""
    for frame in session.start():
        await ws.send_bytes(frame)
    asked: list[tuple[bytes, int]] | None = None
    while True:
        message = await ws.receive()
        if message.type != aiohttp.WSMsgType.BINARY:
            return Ending(ws.close_code or int(CloseCode.GOING_AWAY), "peer closed", True)
        for frame in session.receive(message.data):
            await ws.send_bytes(frame)
        if asked is None and session.have_received:
            asked = probes(session)
            for frame in session.probe(asked):
                await ws.send_bytes(frame)
        if asked is not None and len(session.proofs) >= len(asked):
            await ws.close(code=int(CloseCode.NORMAL), message=b"audited")
            return Ending(int(CloseCode.NORMAL), "audited", by_peer=False)


# --- the daemon ---------------------------------------------------------------------------------


@dataclass
class PeerLink:
    """One live connection (dialled or accepted) and what /health says about it."""

    url: str
    session: Session | None = None
    connected: bool = False
    last_error: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def missing(self) -> int:
        """Events the peer advertised but, though caught up, did not send (0 while syncing)."""
        if self.session is None or not self.session.peer_caught_up:
            return 0
        return sum(self.session.missing().values())

    def lag(self, vv: Mapping[bytes, tuple[int, bytes]]) -> int:
        if self.session is None:
            return -1
        heads = self.session.peer_heads
        return sum(max(0, seq - heads.get(a, 0)) for a, (seq, _) in vv.items())


class Node:
    def __init__(self, replica: Replica, relays: list[str], peers: list[str]) -> None:
        self.replica = replica
        self.port = ReplicaPort(replica)
        self.links: list[PeerLink] = [PeerLink(u) for u in [*relays, *peers]]
        self.started = time.time()
        self.stop = asyncio.Event()
        self._poked = asyncio.Event()
        self.registry = CollectorRegistry()
        self.m_events_in = Counter(
            "shoal_events_received", "Events stored from peers", registry=self.registry
        )
        self.m_links = Gauge(
            "shoal_peers_connected", "Connected peers and relays", registry=self.registry
        )
        self.m_links.set_function(lambda: sum(1 for link in self.links if link.connected))
        self.m_events = Gauge("shoal_events", "Events in the local log", registry=self.registry)
        self.m_events.set_function(self.replica.store.event_count)

    def wake_all(self, _count: int = 0) -> None:
        for link in self.links:
            link.changed.set()

    def _stored(self, count: int) -> None:
        self.m_events_in.inc(count)
        self.wake_all()

    def new_session(self, initiator: bool) -> Session:
        return Session(
            self.replica.engine.signer, self.port, "full", initiator=initiator, clock=time.monotonic
        )

    async def dial_forever(self, link: PeerLink) -> None:
        backoff = BACKOFF_MIN_S
        target = sync_url(link.url, self.replica.log.vault_id)
        async with aiohttp.ClientSession() as http:
            while not self.stop.is_set():
                try:
                    ws = await asyncio.wait_for(connect(http, target), 15)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    link.last_error = f"unreachable: {exc or type(exc).__name__}"
                else:
                    link.session, link.connected = self.new_session(True), True
                    link.changed.set()
                    ending = await drive(ws, link.session, link.changed, self._stored)
                    link.connected = False
                    link.last_error = f"closed {ending.code}: {ending.reason}"
                    if ending.code in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
                        backoff = BACKOFF_MIN_S
                    log.info("link %s: %s", link.url, link.last_error)
                delay = backoff * (0.5 + random.random())
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay)

    async def handle_sync(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["vault"] != self.replica.log.vault_id.hex():
            raise web.HTTPNotFound(text="no such vault here")
        ws = server_socket()
        await ws.prepare(request)
        link = PeerLink(f"{request.remote}", self.new_session(False), True)
        self.links.append(link)
        try:
            ending = await drive(ws, link.session, link.changed, self._stored)  # type: ignore[arg-type]
            log.info("peer %s: closed %s (%s)", request.remote, ending.code, ending.reason)
        finally:
            self.links.remove(link)
        return ws

    async def handle_health(self, request: web.Request) -> web.Response:
        try:
            self.replica.store.query_one("SELECT 1 FROM events LIMIT 1")
            db_ok = True
        except ShoalError:
            db_ok = False
        vv = self.port.version_vector()
        return web.json_response(
            {
                "status": "ok" if db_ok else "degraded",
                "role": "full",
                "version": VERSION,
                "uptime_s": round(time.time() - self.started, 1),
                "database_ok": db_ok,
                "vault": self.replica.log.vault_id.hex(),
                "replica": self.replica.engine.me.hex(),
                "events": sum(seq for seq, _ in vv.values()),
                "peers": [
                    {
                        "url": link.url,
                        "connected": link.connected,
                        "peer": link.session.peer.hex()
                        if link.session and link.session.peer
                        else None,
                        "lag_events": link.lag(vv),
                        "missing_events": link.missing(),
                        "last_error": link.last_error,
                    }
                    for link in self.links
                ],
            },
            status=200 if db_ok else 503,
        )

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), content_type="text/plain", charset="utf-8"
        )

    def poke(self) -> None:
        """Another process on this home (our folder worker) committed: look now."""
        self._poked.set()

    async def watch_local(self) -> None:
        """Notice commits by other processes on this home (and our own) and push them."""
        last = self.replica.store.last_rowid()
        ours = self._poked  # our own writes and our folder worker's commits wake us at once
        self.replica.engine.add_wakeup(ours)
        try:
            while not self.stop.is_set():
                self.replica.log.refresh()
                now = self.replica.store.last_rowid()
                if now != last:
                    last = now
                    self.wake_all()
                    await asyncio.sleep(PUSH_GAP_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ours.wait(), POLL_S)
                ours.clear()
        finally:
            self.replica.engine.remove_wakeup(ours)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(SYNC_PATH, self.handle_sync)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/metrics", self.handle_metrics)
        return app


async def serve_node(
    replica: Replica,
    listen: tuple[str, int] | None,
    relays: list[str],
    peers: list[str],
    discover: bool,
    folders: FolderWorker | None = None,
    processing: Callable[[asyncio.Event], Coroutine[None, None, None]] | None = None,
) -> None:
    """Run the daemon until SIGINT/SIGTERM (with its watched and mirrored folders, whose
    worker process it starts, restarts if it dies, and stops)."""
    node = Node(replica, relays, peers)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.stop.set)
    runner = web.AppRunner(node.app(), access_log=None)
    await runner.setup()
    bound: tuple[str, int] | None = None
    if listen is not None:
        site = web.TCPSite(runner, listen[0], listen[1], shutdown_timeout=5)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        bound = sockets[0].getsockname()[:2] if sockets else listen
    where = f"listening on http://{bound[0]}:{bound[1]}" if bound else "not listening"
    links = ", ".join(link.url for link in node.links) or "none"
    print(
        f"shoal serve: vault {replica.log.vault_id.hex()[:12]}, {where}, syncing with {links}",
        flush=True,
    )
    tasks = [asyncio.create_task(node.dial_forever(link)) for link in list(node.links)]
    tasks.append(asyncio.create_task(node.watch_local()))
    if folders is not None:
        tasks.append(asyncio.create_task(folders.supervise(node.stop, replica.engine, node.poke)))
    if processing is not None:
        tasks.append(asyncio.create_task(processing(node.stop)))
    if discover:
        from replicas.discovery import discover_peers

        tasks.append(asyncio.create_task(discover_peers(node, bound)))
    try:
        await node.stop.wait()
    finally:
        if folders is not None:
            await asyncio.to_thread(folders.stop)  # it finishes the batch it is writing
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
