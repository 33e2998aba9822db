"""The blind relay: stores and forwards ciphertext for many vaults; holds no vault keys.

Each vault is one SQLite file ``DATA/vaults/<vault id>.db`` run through the same accept
path as a replica (``eventlog``): it accepts only events that verify and whose author is on
the vault's roster (read from public membership events), keeps every accepted event (it is
the backup), and forwards new events live to the vault's other connections. A vault the
relay has never seen is created by its first uploader, which must start with the vault's
genesis (only a member holds it); what is not a member's stays pending and counts against the
vault's quota.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from eventlog.accept import Log, Outcome
from eventlog.crypto import SigningKey
from eventlog.errors import ShoalError
from eventlog.store import Store
from replicas.home import read_secret, write_secret
from transport.messages import CloseCode, ProtocolError
from transport.ports import LogPortBase
from transport.session import Session
from transport.ws import SYNC_PATH, drive, server_socket

log = logging.getLogger("shoal.relay")

DEFAULT_QUOTA_BYTES: Final = 1 << 30
DEFAULT_MAX_CONNECTIONS: Final = 1000
MAX_CONNECTIONS_PER_VAULT: Final = 200
MAX_VAULTS: Final = 10_000
VERSION: Final = "0.1.0"


@dataclass
class RelayVault:
    """One vault on the relay: its log and its live connections."""

    vault_id: bytes
    log: Log
    bytes_used: int
    quota: int
    wakeups: set[asyncio.Event] = field(default_factory=set)

    def accept(self, raws: list[bytes]) -> Outcome:
        """Accept a batch within the quota, which counts stored and pending (parked) bytes."""
        size = sum(len(r) for r in raws)
        if self.bytes_used + size > self.quota:
            raise ProtocolError(
                CloseCode.QUOTA_EXCEEDED, f"vault quota of {self.quota} bytes reached"
            )
        outcome = self.log.accept_batch(raws)
        self.bytes_used = self.log.store.bytes_held()
        if outcome.accepted:
            for wakeup in self.wakeups:
                wakeup.set()
        return outcome


class RelayPort(LogPortBase):
    def __init__(self, vault: RelayVault) -> None:
        super().__init__(vault.log, vault.accept)
        self.vault = vault

    def may_connect(self, peer: bytes, role: str, initiator: bool) -> bool:
        if not self.log.store.version_vector():
            return True  # an empty vault: the first uploader brings the genesis
        return super().may_connect(peer, role, initiator)


class Relay:
    """The relay's state: its key, its vaults, its limits and its metrics."""

    def __init__(
        self,
        data: Path,
        *,
        quota: int = DEFAULT_QUOTA_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.data = data
        self.quota = quota
        self.max_connections = max_connections
        (data / "vaults").mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path = data / "relay.key"
        if not key_path.exists():
            write_secret(key_path, SigningKey.generate().private_bytes())
        self.signer = SigningKey(read_secret(key_path))
        self.vaults: dict[bytes, RelayVault] = {}
        self.connections = 0
        self.started = time.time()
        self.registry = CollectorRegistry()
        self.m_connections = Gauge(
            "shoal_relay_connections", "Open sync connections", registry=self.registry
        )
        self.m_events = Counter(
            "shoal_relay_events_stored", "Events stored", registry=self.registry
        )
        self.m_events_sent = Counter(
            "shoal_relay_events_sent", "Events forwarded", registry=self.registry
        )
        self.m_closed = Counter(
            "shoal_relay_connections_closed",
            "Connections closed by code",
            ["code"],
            registry=self.registry,
        )
        self.m_vaults = Gauge("shoal_relay_vaults", "Vaults held", registry=self.registry)
        self.m_vaults.set_function(lambda: len(list((self.data / "vaults").glob("*.db"))))

    def vault(self, vault_id: bytes) -> RelayVault:
        cached = self.vaults.get(vault_id)
        if cached is not None:
            return cached
        path = self.data / "vaults" / f"{vault_id.hex()}.db"
        fresh = not path.exists()
        if fresh and len(list((self.data / "vaults").glob("*.db"))) >= MAX_VAULTS:
            raise ProtocolError(CloseCode.QUOTA_EXCEEDED, "relay holds its maximum of vaults")
        store = Store.open(path, create=True)
        if fresh:
            store.set_fact("vault_id", vault_id)
        vault = RelayVault(vault_id, Log(store), store.bytes_held(), self.quota)
        self.vaults[vault_id] = vault
        return vault

    def _forget_if_empty(self, vault: RelayVault) -> None:
        """A vault nobody uploaded a genesis to leaves nothing behind (no squatting)."""
        if vault.wakeups or vault.log.store.event_count() or vault.log.store.pending_count():
            return
        vault.log.store.close()
        del self.vaults[vault.vault_id]
        path = self.data / "vaults" / f"{vault.vault_id.hex()}.db"
        for extra in ("", "-wal", "-shm"):
            path.with_name(path.name + extra).unlink(missing_ok=True)

    def close(self) -> None:
        for vault in self.vaults.values():
            vault.log.store.close()
        self.vaults.clear()

    # --- HTTP ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(SYNC_PATH, self.handle_sync)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/metrics", self.handle_metrics)
        app.on_shutdown.append(self._on_shutdown)
        app["sockets"] = set()
        return app

    async def handle_sync(self, request: web.Request) -> web.StreamResponse:
        try:
            vault_id = bytes.fromhex(request.match_info["vault"])
            if len(vault_id) != 32:
                raise ValueError
        except ValueError:
            raise web.HTTPBadRequest(text="vault must be 64 hex digits") from None
        ws = server_socket()
        await ws.prepare(request)
        if self.connections >= self.max_connections:
            await ws.close(code=CloseCode.TOO_MANY_CONNECTIONS, message=b"relay is full")
            return ws
        try:
            vault = self.vault(vault_id)
        except (ProtocolError, ShoalError) as exc:
            code = exc.code if isinstance(exc, ProtocolError) else CloseCode.INTERNAL
            await ws.close(code=code, message=str(exc)[:120].encode())
            return ws
        if len(vault.wakeups) >= MAX_CONNECTIONS_PER_VAULT:
            await ws.close(code=CloseCode.TOO_MANY_CONNECTIONS, message=b"vault is busy")
            return ws
        session = Session(
            self.signer, RelayPort(vault), "relay", initiator=False, clock=time.monotonic
        )
        changed = asyncio.Event()
        vault.wakeups.add(changed)
        request.app["sockets"].add(ws)
        self.connections += 1
        self.m_connections.inc()
        try:
            ending = await drive(ws, session, changed, on_stored=self.m_events.inc)
        finally:
            vault.wakeups.discard(changed)
            request.app["sockets"].discard(ws)
            self.connections -= 1
            self.m_connections.dec()
            self._forget_if_empty(vault)
        self.m_events_sent.inc(session.stats.events_sent)
        self.m_closed.labels(code=str(ending.code)).inc()
        log.info(
            "vault %s peer %s: closed %s (%s); %d in, %d out",
            vault_id.hex()[:12],
            session.peer.hex()[:12] if session.peer else "-",
            ending.code,
            ending.reason,
            session.stats.events_stored,
            session.stats.events_sent,
        )
        return ws

    async def handle_health(self, request: web.Request) -> web.Response:
        ok = True
        try:
            for vault in self.vaults.values():
                vault.log.store.query_one("SELECT 1")
        except ShoalError:
            ok = False
        return web.json_response(
            {
                "status": "ok" if ok else "degraded",
                "role": "relay",
                "version": VERSION,
                "uptime_s": round(time.time() - self.started, 1),
                "database_ok": ok,
                "vaults": len(list((self.data / "vaults").glob("*.db"))),
                "connections": self.connections,
            },
            status=200 if ok else 503,
        )

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), content_type="text/plain", charset="utf-8"
        )

    async def _on_shutdown(self, app: web.Application) -> None:
        for ws in list(app["sockets"]):
            await ws.close(code=CloseCode.GOING_AWAY, message=b"relay shutting down")


async def serve_relay(
    data: Path,
    host: str,
    port: int,
    *,
    quota: int = DEFAULT_QUOTA_BYTES,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ready: asyncio.Event | None = None,
) -> None:
    """Run a relay until SIGINT/SIGTERM; close connections and databases cleanly."""
    relay = Relay(data, quota=quota, max_connections=max_connections)
    runner = web.AppRunner(relay.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, shutdown_timeout=5)
    await site.start()
    log.info("relay listening on %s:%d, data in %s", host, port, data)
    print(f"shoal relay listening on http://{host}:{port} (data {data})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        relay.close()


def parse_listen(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        host, port = text, str(default_port)
    try:
        return host.strip("[]") or "127.0.0.1", int(port)
    except ValueError:
        raise ShoalError(f"--listen wants HOST:PORT, got {text!r}") from None
