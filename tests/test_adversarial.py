"""The adversarial suite (issue 6): forged, replayed, equivocating, rolled back, tampered by a
relay, skewed in time, and out of disk space; each case with the behaviour it must have.

Real stores and real sessions throughout: the "malicious relay" is the real relay port
(``replicas.relay``) whose outgoing batches a subclass spoils, so everything the receiving
replica does is the production code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import web

from engine import views
from eventlog.accept import Status, now_ms
from eventlog.crypto import SigningKey
from eventlog.envelope import (
    MAX_EVENT_BYTES,
    Event,
    Header,
    Kind,
    decode_event,
    encode_signed,
    encode_wire,
)
from eventlog.errors import (
    BadSignatureError,
    DecodeError,
    FrozenAuthorError,
    MalformedError,
    NonCanonicalError,
    OversizeError,
    StorageError,
    TruncatedError,
)
from eventlog.integrity import walk
from eventlog.payload import decode_payload
from eventlog.sealing import Keyring, Position, author_event
from replicas.home import Home
from replicas.node import SyncError, sync_once
from replicas.relay import Relay, RelayPort, RelayVault
from replicas.vault import Replica, init_vault, open_replica
from tests.conftest import add_replica, all_raw
from tests.test_session import Wire, bulk, documents, refusal, session, tampered, vv
from transport import session as session_module
from transport import ws as ws_module
from transport.messages import MAX_FRAME_BYTES, CloseCode, ProtocolError, decode
from transport.session import Session
from transport.ws import SYNC_PATH, Ending, connect, drive, server_socket, sync_url

SHOAL = str(Path(sys.executable).parent / "shoal")
TEN_YEARS_MS: Final = 10 * 365 * 24 * 3600 * 1000


# --- helpers ------------------------------------------------------------------------------------


def with_header(event: Event, **changes: Any) -> Header:
    return event.header._replace(**changes)


def forged(raw: bytes, how: str, other: SigningKey) -> bytes:
    """``raw`` changed after signing, its signature kept (or, for ``sig``, damaged)."""
    event = decode_event(raw)
    if how == "header":
        header = with_header(event, lamport=event.lamport + 1)
        return encode_wire(encode_signed(header, event.body), event.sig)
    if how == "body":
        return tampered(raw)
    if how == "key id":  # claims another member wrote it
        header = with_header(event, author=other.public)
        return encode_wire(encode_signed(header, event.body), event.sig)
    assert how == "sig"
    sig = bytearray(event.sig)
    sig[7] ^= 0x40
    return encode_wire(event.signed, bytes(sig))


def relay_session(port: RelayPort, relay: Relay) -> Session:
    return Session(relay.signer, port, "relay", initiator=False, clock=time.monotonic)


def in_process_relay(tmp_path: Path, founder: Replica) -> tuple[Relay, RelayVault]:
    relay = Relay(tmp_path / "relay")
    vault = relay.vault(founder.log.vault_id)
    Wire(session(founder, True), relay_session(RelayPort(vault), relay)).start().settle()
    return relay, vault


class SpoilingRelayPort(RelayPort):
    """The real relay port, except that batches of ``victim`` leave it spoiled by ``mode``."""

    def __init__(self, vault: RelayVault, victim: bytes, mode: str) -> None:
        super().__init__(vault)
        self.victim, self.mode = victim, mode
        self.head = vault.log.version_vector()[victim].seq

    def serving_batch(
        self,
        author: bytes,
        first: int,
        last: int,
        max_events: int = 1024,
        max_bytes: int = 2**20,
        run_on: bool = True,
    ) -> list[bytes]:
        raws = super().serving_batch(author, first, last, max_events, max_bytes, run_on)
        if author != self.victim or len(raws) < 3 or self.mode == "honest":
            return raws
        mid = len(raws) // 2
        match self.mode:
            case "bit flip in a body":
                raws[mid] = tampered(raws[mid])
            case "bit flip in a header":
                raws[mid] = forged(raws[mid], "header", SigningKey.generate())
            case "bit flip in the last signature":
                raws[-1] = forged(raws[-1], "sig", SigningKey.generate())
            case "swap of two bodies":
                one, two = decode_event(raws[mid]), decode_event(raws[mid + 1])
                raws[mid] = encode_wire(encode_signed(one.header, two.body), one.sig)
                raws[mid + 1] = encode_wire(encode_signed(two.header, one.body), two.sig)
            case "reordering":
                random.Random(len(raws)).shuffle(raws)
            case "duplication":
                raws = [raw for raw in raws for _ in range(2)]
            case "withholding one in the middle":  # the same seq on every connection
                raws = [raw for raw in raws if decode_event(raw).seq != self.head // 2]
            case "withholding the tail":
                raws = [raw for raw in raws if decode_event(raw).seq <= self.head - 3]
            case _:
                raise AssertionError(self.mode)
        return raws


def total_events(replica: Replica) -> int:
    return replica.store.event_count() + replica.store.pending_count()


# --- forged signatures, replay ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "body", "key id", "sig"])
def test_a_forged_event_is_refused_alone_and_inside_a_batch(trio: list[Replica], how: str) -> None:
    a, b, c = trio
    Wire(session(a, True), session(b, False)).start().settle()
    before = vv(a)
    raws = bulk(b, 5)
    spoiled = forged(raws[-1], how, c.engine.signer)
    with pytest.raises(BadSignatureError):
        a.engine.accept_remote(spoiled)
    with pytest.raises(BadSignatureError):  # the tail of a segment: its signature vouches
        a.engine.accept_remote_batch([*raws[:-1], spoiled])
    if how != "sig":  # a changed header or body changes the id: the chain breaks there
        with pytest.raises(BadSignatureError):
            a.engine.accept_remote_batch([*raws[:2], forged(raws[2], how, c.engine.signer)])
    assert vv(a) == before and a.store.pending_count() == 0
    assert walk(a.store, a.engine.keyring).ok
    a.engine.accept_remote_batch(raws)  # the genuine events still go in
    assert vv(a)[b.engine.me] == vv(b)[b.engine.me]


def test_replaying_everything_changes_nothing(trio: list[Replica]) -> None:
    a, b, c = trio
    doc = a.engine.create_doc("Replayed", "one\n")
    a.engine.flush()
    Wire(session(a, True), session(b, False)).start().settle()
    b.engine.append_text(doc, "two\n")
    b.engine.flush()
    Wire(session(a, True), session(b, False)).start().settle()
    state, last = (documents(a), vv(a)), a.store.last_rowid()
    raws = all_raw(a) + all_raw(b) + all_raw(c)
    for raw in raws:
        assert a.engine.accept_remote(raw).status is Status.DUPLICATE
    for chunk in (raws, list(reversed(raws)), raws[3:] + raws[:3]):
        outcome = a.engine.accept_remote_batch(chunk)
        assert outcome.status is Status.DUPLICATE and outcome.accepted == []
    assert (documents(a), vv(a)) == state and a.store.last_rowid() == last
    assert str(a.engine.open(doc).body) == "one\ntwo\n"
    assert a.store.pending_count() == 0 and walk(a.store, a.engine.keyring).ok


# --- equivocation, as the CLI shows it ----------------------------------------------------------


def shoal(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHOAL, "--home", str(home), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_equivocation_is_kept_frozen_and_shown_by_status_and_verify(tmp_path: Path) -> None:
    a = init_vault(Home(tmp_path / "a"), "a")
    b = add_replica(a, tmp_path / "b", "b")
    try:
        position = b.log.next_position(b.engine.me)
        twins = [
            author_event(
                b.engine.signer,
                b.engine.keyring,
                b.log.vault_id,
                position,
                now_ms(),
                Kind.DATA,
                1,
                {"t": "test.note", "which": which},
            )
            for which in ("left", "right")
        ]
        assert a.engine.accept_remote(twins[0].raw).status is Status.ACCEPTED
        assert a.engine.accept_remote(twins[1].raw).status is Status.EQUIVOCATION
        later = Position(position.seq + 1, twins[0].id, position.lamport + 1)
        with pytest.raises(FrozenAuthorError):
            a.engine.accept_remote(
                author_event(
                    b.engine.signer,
                    b.engine.keyring,
                    b.log.vault_id,
                    later,
                    now_ms(),
                    Kind.DATA,
                    1,
                    {"t": "test.note"},
                ).raw
            )
    finally:
        a.close()
        b.close()
    me = b.engine.me.hex()
    status = json.loads(shoal(tmp_path / "a", "status", "--json").stdout)
    assert status["equivocations"] == 2 and status["frozen"] == [me]
    plain = shoal(tmp_path / "a", "status").stdout
    assert "ATTENTION" in plain and "2 equivocation evidence rows" in plain
    assert "1 frozen author(s)" in plain
    checked = shoal(tmp_path / "a", "verify", "--json")
    assert checked.returncode == 1
    report = json.loads(checked.stdout)
    evidence = [p for p in report["problems"] if p["kind"] == "equivocation"]
    assert {p["event"] for p in evidence} == {t.id.hex() for t in twins}
    assert {(p["author"], p["seq"]) for p in evidence} == {(me, position.seq)}
    assert [p for p in report["problems"] if p["kind"] != "equivocation"] == []
    text = shoal(tmp_path / "a", "verify")
    assert text.returncode == 1 and text.stderr.count("BAD equivocation") == 2
    # The evidence survives a restart, and the first of the twins stays in the log.
    with contextlib.closing(open_replica(Home(tmp_path / "a"))) as again:
        assert b.engine.me in again.log.frozen
        assert again.store.event_at(b.engine.me, position.seq).id == twins[0].id  # type: ignore[union-attr]


# --- a relay that lies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode",
    [
        "bit flip in a body",
        "bit flip in a header",
        "bit flip in the last signature",
        "swap of two bodies",
    ],
)
def test_a_tampering_relay_is_refused_and_nothing_of_it_stays(
    trio: list[Replica], tmp_path: Path, mode: str
) -> None:
    a, b, _ = trio
    bulk(a, 40)
    relay, vault = in_process_relay(tmp_path, a)
    held = vv(b)
    evil = SpoilingRelayPort(vault, a.engine.me, mode)
    wire = Wire(session(b, True), relay_session(evil, relay)).start()
    refusal(wire.settle, CloseCode.BAD_EVENT)
    # The batch is one transaction: nothing of it stored, nothing parked, the log whole.
    assert vv(b).get(a.engine.me) == held.get(a.engine.me)
    assert b.store.pending_count() == 0 and walk(b.store, b.engine.keyring).ok
    # The same relay, honest again, delivers it all.
    honest = relay_session(RelayPort(vault), relay)
    Wire(session(b, True), honest).start().settle()
    assert vv(b)[a.engine.me] == vv(a)[a.engine.me] and walk(b.store, b.engine.keyring).ok


@pytest.mark.parametrize("mode", ["reordering", "duplication"])
def test_a_reordering_or_duplicating_relay_changes_nothing(
    trio: list[Replica], tmp_path: Path, mode: str
) -> None:
    a, b, _ = trio
    doc = a.engine.create_doc("Shuffled", "")
    for i in range(30):
        a.engine.append_text(doc, f"line {i}\n")
        a.engine.flush()
    relay, vault = in_process_relay(tmp_path, a)
    evil = SpoilingRelayPort(vault, a.engine.me, mode)
    Wire(session(b, True), relay_session(evil, relay)).start().settle()
    assert vv(b) == vv(a) and documents(b) == documents(a)
    assert b.store.pending_count() == 0 and walk(b.store, b.engine.keyring).ok


@pytest.mark.parametrize(
    ("mode", "parked"), [("withholding one in the middle", True), ("withholding the tail", False)]
)
def test_a_withholding_relay_leaves_a_reported_gap(
    trio: list[Replica], tmp_path: Path, mode: str, parked: bool
) -> None:
    a, b, _ = trio
    bulk(a, 40)
    relay, vault = in_process_relay(tmp_path, a)
    evil = relay_session(SpoilingRelayPort(vault, a.engine.me, mode), relay)
    wire = Wire(session(b, True), evil).start().settle()
    have = vv(b).get(a.engine.me, (0, b""))[0]
    assert wire.x.peer_caught_up
    assert wire.x.missing() == {a.engine.me: vv(a)[a.engine.me][0] - have}
    assert (b.store.pending_count() > 0) == parked
    problems = walk(b.store, b.engine.keyring).problems
    assert [p.kind for p in problems] == (["pending"] if parked else [])
    # A full sync asks again, then reports the gap instead of success.
    gap = vv(a)[a.engine.me][0] - have
    served = asyncio.run(_sync_through(b, relay, vault, a.engine.me, [mode, mode]))
    assert isinstance(served[0], SyncError) and served[1] == 2
    assert f"missing {gap} events from relay {relay.signer.public.hex()[:12]}" in str(served[0])
    # Once the relay serves them, the gap closes and sync succeeds.
    assert asyncio.run(_sync_through(b, relay, vault, a.engine.me, ["honest"]))[1] == 1
    assert vv(b) == vv(a) and b.store.pending_count() == 0


async def _sync_through(
    replica: Replica, relay: Relay, vault: RelayVault, victim: bytes, modes: list[str]
) -> tuple[BaseException | None, int]:
    """``sync_once`` against a real aiohttp endpoint serving the relay port spoiled by
    ``modes[i]`` on the i-th connection; returns the error (if any) and the connections made."""
    connections = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal connections
        mode = modes[min(connections, len(modes) - 1)]
        connections += 1
        ws = server_socket()
        await ws.prepare(request)
        await drive(ws, relay_session(SpoilingRelayPort(vault, victim, mode), relay))
        return ws

    async with sync_endpoint(handle) as url:
        try:
            await sync_once(replica, url, timeout=60)
        except SyncError as exc:
            return exc, connections
    return None, connections


@contextlib.asynccontextmanager
async def sync_endpoint(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A real aiohttp server on 127.0.0.1 answering the sync path with ``handle``; its URL."""
    app = web.Application()
    app.router.add_get(SYNC_PATH, handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def test_a_peer_that_stops_reading_while_we_send_is_closed_as_stalled(
    trio: list[Replica], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay half-closes its socket and reads nothing more while the replica has
    megabytes to push (what a TCP proxy that only shuts a dead upstream's client socket
    down does). The replica's send waits on a full socket buffer, where neither the
    session's ack timeout nor the reader notices anything: the send's own bound must end the
    connection with TIMEOUT (``SEND_TIMEOUT_S``, 1 s here). Batches of 1 MiB: then the
    window is well beyond what the socket buffers take, whatever the kernel grows them to."""
    monkeypatch.setattr(ws_module, "SEND_TIMEOUT_S", 1.0)
    monkeypatch.setattr(session_module, "BATCH_TARGET_BYTES", 1024 * 1024)
    a = trio[0]
    relay, vault = in_process_relay(tmp_path, a)
    for i in range(40):
        a.engine.append_record({"t": "test.bulk", "n": i, "blob": os.urandom(200_000)})
    vanished = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = server_socket()
        await ws.prepare(request)
        relay_side = relay_session(RelayPort(vault), relay)
        for frame in relay_side.start():
            await ws.send_bytes(frame)
        while relay_side.stats.events_stored == 0:
            message = await ws.receive()
            for frame in relay_side.receive(message.data):
                await ws.send_bytes(frame)
        transport = request.transport
        assert transport is not None
        transport.pause_reading()
        fd = os.dup(transport.get_extra_info("socket").fileno())
        with socket.socket(fileno=fd) as raw:
            raw.shutdown(socket.SHUT_RDWR)
            vanished.set()
            await asyncio.sleep(30)  # keeps the descriptor: no RST for what the replica sends
        return ws

    async def push() -> Ending:
        async with sync_endpoint(handle) as url, aiohttp.ClientSession() as http:
            ws = await connect(http, sync_url(url, a.log.vault_id))
            return await asyncio.wait_for(drive(ws, session(a, True)), 15)

    ending = asyncio.run(push())
    assert vanished.is_set()
    assert ending.code == CloseCode.TIMEOUT and not ending.by_peer, ending
    assert 0 < vault.log.store.event_count() < a.store.event_count()


def test_a_rolled_back_relay_never_rolls_a_replica_back(
    trio: list[Replica], tmp_path: Path
) -> None:
    """The relay loses its newest events (restored from an old backup). A replica that holds
    them keeps them, sees the relay's version vector behind its own signed heads, and
    re-uploads exactly the difference; a rolled-back relay cannot make anyone forget."""
    a, b, _ = trio
    bulk(a, 10)
    relay, vault = in_process_relay(tmp_path, a)
    relay.close()
    db = tmp_path / "relay" / "vaults" / f"{a.log.vault_id.hex()}.db"
    shutil.copy(db, tmp_path / "old.db")
    relay = Relay(tmp_path / "relay")
    vault = relay.vault(a.log.vault_id)
    bulk(a, 25)
    Wire(session(a, True), relay_session(RelayPort(vault), relay)).start().settle()
    Wire(session(b, True), relay_session(RelayPort(vault), relay)).start().settle()
    assert vv(b) == vv(a)
    state = (documents(b), vv(b))
    relay.close()
    for extra in ("-wal", "-shm"):
        db.with_name(db.name + extra).unlink(missing_ok=True)
    shutil.copy(tmp_path / "old.db", db)  # the rollback
    relay = Relay(tmp_path / "relay")
    vault = relay.vault(a.log.vault_id)
    behind = vault.log.version_vector()[a.engine.me].seq
    assert behind < vv(b)[a.engine.me][0]
    wire = Wire(session(b, True), relay_session(RelayPort(vault), relay)).start().settle()
    assert (documents(b), vv(b)) == state  # nothing forgotten
    assert wire.x.peer_have[a.engine.me][0] == behind  # the relay said it was behind...
    assert wire.x.stats.events_sent == vv(b)[a.engine.me][0] - behind  # ...and was refilled
    assert wire.x.missing() == {}
    assert {k: (h.seq, h.id) for k, h in vault.log.version_vector().items()} == vv(b)
    assert walk(vault.log.store).ok
    relay.close()


# --- malformed frames ---------------------------------------------------------------------------

MALFORMED_WIRE: Final = [
    ("truncated varint", b"\x92\x05\xcd\x01", CloseCode.MALFORMED),
    ("length beyond data", b"\x92\x02\xc4\x40abc", CloseCode.MALFORMED),
    ("unknown type", b"\x91\x63", CloseCode.MALFORMED),
    ("non-canonical integer", b"\x92\x05\xcc\x01", CloseCode.MALFORMED),
    ("non-canonical array header", b"\xdc\x00\x02\x05\x01", CloseCode.MALFORMED),
    ("oversize", b"\x00" * (MAX_FRAME_BYTES + 1), CloseCode.FRAME_TOO_LARGE),
]


@pytest.mark.parametrize(
    ("name", "frame", "code"), MALFORMED_WIRE, ids=[m[0] for m in MALFORMED_WIRE]
)
def test_malformed_sync_frames(name: str, frame: bytes, code: CloseCode) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert info.value.code is code, name


def _an_event() -> bytes:
    signer = SigningKey.generate()
    return author_event(
        signer,
        Keyring({1: bytes(32)}),
        bytes(range(32)),
        Position(1, bytes(32), 1),
        now_ms(),
        Kind.DATA,
        1,
        {"t": "test.note"},
    ).raw


def test_malformed_events_and_payloads() -> None:
    raw = _an_event()
    event = decode_event(raw)
    cases: list[tuple[bytes, type[DecodeError]]] = [
        (raw[:-40], TruncatedError),  # the signature's length promises more than is there
        (raw[:2], TruncatedError),  # a length header cut in the middle
        (b"\x92\xc5\x01", TruncatedError),  # a truncated 16-bit length
        (b"\x92\xc4\x40" + b"x" * 10, TruncatedError),  # bin8 longer than the data
        (b"\x92\xc4\x00\xc4\x00\xc4\x00", MalformedError),  # trailing bytes
        (b"\xc1", MalformedError),  # a byte msgpack never uses
        (
            b"\x92\xc6" + len(event.signed).to_bytes(4, "big") + event.signed + raw[-66:],
            NonCanonicalError,
        ),  # bin32 where bin16 fits
        (b"\x00" * (MAX_EVENT_BYTES + 1), OversizeError),
    ]
    for data, error in cases:
        with pytest.raises(error):
            decode_event(data)
    for data in (b"\x81\xa1t", b"\x81\xa1t\xa1x\x00", b"\xc1", b"\x93\x01\x02\x03", b""):
        with pytest.raises(DecodeError):
            decode_payload(data)


# --- clock skew ---------------------------------------------------------------------------------


@contextlib.contextmanager
def clock_shifted(monkeypatch: pytest.MonkeyPatch, offset_ms: int) -> Iterator[None]:
    """This process's wall clock, ``offset_ms`` away (what a replica with a wrong clock reads)."""
    real = time.time
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: real() + offset_ms / 1000)
        yield


def test_ten_years_of_clock_skew_does_not_change_a_merge(
    trio: list[Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    """b runs 10 years fast, c 10 years slow. Concurrent edits of one document still merge
    to the same state everywhere, every line once, and order by (lamport, author) only."""
    a, b, c = trio
    doc = a.engine.create_doc("Skewed", "start\n")
    a.engine.flush()
    for other in (b, c):
        Wire(session(a, True), session(other, False)).start().settle()
    lines: list[str] = []
    for r in range(4):
        for replica, offset in ((a, 0), (b, TEN_YEARS_MS), (c, -TEN_YEARS_MS)):
            with clock_shifted(monkeypatch, offset):
                line = f"{replica.name} round {r}\n"
                lines.append(line)
                if r % 2:
                    replica.engine.edit_text(doc, 0, 0, line)  # concurrent inserts at the top
                else:
                    replica.engine.append_text(doc, line)
                replica.engine.set_title(doc, f"title by {replica.name} {r}")
                replica.engine.flush()
        for x, y in ((a, b), (b, c), (c, a)):
            Wire(session(x, True), session(y, False)).start().settle()
    Wire(session(a, True), session(b, False)).start().settle()
    assert vv(a) == vv(b) == vv(c)
    assert documents(a) == documents(b) == documents(c)
    body = str(a.engine.open(doc).body)
    assert sorted(body.splitlines(keepends=True)) == sorted([*lines, "start\n"])
    now = now_ms()
    times = {r.author: r.time_ms for r in views.log(a.store, doc=doc)}
    assert times[b.engine.me] > now + TEN_YEARS_MS * 9 // 10
    assert times[c.engine.me] < now - TEN_YEARS_MS * 9 // 10
    # History is ordered by (lamport, author) on every replica, whatever the clocks said.
    orders = [[r.id for r in views.log(x.store, doc=doc)] for x in trio]
    assert orders[0] == orders[1] == orders[2]
    rows = views.log(a.store, doc=doc)
    assert [(r.lamport, r.author) for r in rows] == sorted(
        ((r.lamport, r.author) for r in rows), reverse=True
    )


# --- disk full ----------------------------------------------------------------------------------


def test_a_full_database_is_a_typed_error_reads_work_and_a_retry_succeeds(
    make_replica: Callable[[str], Replica],
) -> None:
    """Disk full, simulated with SQLite's ``max_page_count`` on the replica's own connection
    (the CLI-level test with a real full tmpfs is in tests/slow/test_disk_full.py)."""
    a = make_replica("a")
    doc = a.engine.create_doc("Full", "kept\n")
    a.engine.flush()
    conn = a.store.conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    before = (vv(a), a.store.last_rowid())
    big = os.urandom(6 * 1024).hex()  # stays in SQLite: a 16 KiB event would go to the pack
    with pytest.raises(StorageError, match="full"):
        a.engine.append_text(doc, big)
        a.engine.flush()
    assert (vv(a), a.store.last_rowid()) == before
    assert str(a.engine.open(doc).body) == "kept\n"  # reads still work, nothing half-written
    assert [d.title for d in views.list_docs(a.store)] == ["Full"]
    conn.execute(f"PRAGMA max_page_count = {2**30}")  # space returns
    a.engine.append_text(doc, "retried\n")
    a.engine.flush()
    assert str(a.engine.open(doc).body) == "kept\nretried\n"
    assert walk(a.store, a.engine.keyring).ok
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# --- found by the fuzz (tests/test_decoder_fuzz.py) ----------------------------------------------


def test_a_members_garbage_doc_update_is_refused_with_a_code_or_stored_inert(
    trio: list[Replica],
) -> None:
    """A member (or a stolen key) signs and seals a ``doc.update`` whose update bytes are not
    Yjs. Syncing it must end in a typed refusal (BAD_EVENT) or store it without applying it;
    today pycrdt's ``ValueError`` escapes the engine, the session and ``drive``, so every
    full replica's sync with that author stops for good while the relay keeps serving it."""
    a, b, _ = trio
    doc = a.engine.create_doc("Target", "intact\n")
    a.engine.flush()
    Wire(session(a, True), session(b, False)).start().settle()
    poison = author_event(
        b.engine.signer,
        b.engine.keyring,
        b.log.vault_id,
        b.log.next_position(b.engine.me),
        now_ms(),
        Kind.DATA,
        b.engine.keyring.current_epoch,
        {"t": "doc.update", "doc": doc, "u": b"\x01\x02 not a yjs update"},
    )
    b.log.accept(poison.raw)  # b's log holds it (as a relay would)
    wire = Wire(session(b, True), session(a, False)).start()
    with contextlib.suppress(ProtocolError):
        wire.settle()
    assert str(a.engine.open(doc).body) == "intact\n"
    assert walk(a.store, a.engine.keyring).ok
    # stored inert, and sync with that author goes on past it
    assert a.store.event_by_id(poison.id) is not None
    b.engine.append_text(doc, "after the poison\n")
    b.engine.flush()
    Wire(session(b, True), session(a, False)).start().settle()
    assert str(a.engine.open(doc).body) == "intact\nafter the poison\n"
