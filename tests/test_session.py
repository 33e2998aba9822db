"""The sans-IO sync protocol: two ``Session``s wired back to back in memory over real vault
stores (``ReplicaPort``), and the relay's blind port; every refusal with its close code."""

from __future__ import annotations

import os
import random
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine import views
from eventlog.accept import now_ms
from eventlog.crypto import SigningKey
from eventlog.envelope import Kind, assemble, decode_event, encode_signed, encode_wire
from eventlog.errors import BadSignatureError
from eventlog.integrity import walk
from eventlog.sealing import Position, author_event
from replicas.node import ReplicaPort
from replicas.relay import Relay, RelayPort
from replicas.vault import Replica, open_replica
from transport.messages import (
    MAX_BATCH_EVENTS,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    CaughtUp,
    CloseCode,
    Error,
    Events,
    Have,
    Hello,
    ProtocolError,
    decode,
    encode,
)
from transport.session import (
    ACK_DELAY_S,
    ACK_EVERY,
    ACK_TIMEOUT_S,
    BATCH_TARGET_EVENTS,
    FRAME_BURST,
    HANDSHAKE_TIMEOUT_S,
    WINDOW,
    LogPort,
    Session,
    State,
    auth_transcript,
)


class Clock:
    """A clock the test moves by hand (timeouts, rate limits)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def session(
    replica: Replica,
    initiator: bool,
    *,
    signer: SigningKey | None = None,
    clock: Callable[[], float] = time.monotonic,
    port: LogPort | None = None,
    role: str = "full",
) -> Session:
    return Session(
        signer or replica.engine.signer,
        port or ReplicaPort(replica),
        role,
        initiator=initiator,
        clock=clock,
    )


class Wire:
    """Two sessions back to back: frames queue in each direction until delivered."""

    def __init__(self, x: Session, y: Session) -> None:
        self.x, self.y = x, y
        self.to_x: deque[bytes] = deque()
        self.to_y: deque[bytes] = deque()
        self.delivered = 0

    def start(self) -> Wire:
        self.to_y.extend(self.x.start())
        self.to_x.extend(self.y.start())
        return self

    def step(self) -> bool:
        """Deliver at most one frame each way; False when nothing was in flight."""
        moved = False
        if self.to_y:
            self.to_x.extend(self.y.receive(self.to_y.popleft()))
            moved = True
            self.delivered += 1
        if self.to_x:
            self.to_y.extend(self.x.receive(self.to_x.popleft()))
            moved = True
            self.delivered += 1
        if not moved:  # idle: the ACKs a real driver sends after ACK_DELAY_S go now
            self.to_x.extend(self.y.due_acks(now=True))
            self.to_y.extend(self.x.due_acks(now=True))
            moved = bool(self.to_x or self.to_y)
        return moved

    def settle(self, max_frames: int = 100_000) -> Wire:
        while self.step():
            assert self.delivered < max_frames, "sessions never settled"
        return self

    def handshake_only(self) -> tuple[list[bytes], list[bytes]]:
        """HELLO and AUTH both ways; returns the HAVE frames (undelivered) of x and y."""
        hello_x, hello_y = self.x.start(), self.y.start()
        auth_y = self.y.receive(hello_x[0])
        auth_x = self.x.receive(hello_y[0])
        have_x = self.x.receive(auth_y[0])
        have_y = self.y.receive(auth_x[0])
        return have_x, have_y


def vv(replica: Replica) -> dict[bytes, tuple[int, bytes]]:
    return {a: (h.seq, h.id) for a, h in replica.store.version_vector().items()}


def documents(replica: Replica) -> list[tuple[bytes, str, str]]:
    return sorted(
        (d.doc, d.title, str(replica.engine.open(d.doc).body))
        for d in views.list_docs(replica.store)
    )


def bulk(replica: Replica, count: int, size: int = 8) -> list[bytes]:
    """Append ``count`` small sealed data events of this replica fast; their raw bytes."""
    raws = []
    with replica.store.atomic():
        for i in range(count):
            outcome = replica.log.append_local(
                replica.engine.signer,
                replica.engine.keyring,
                Kind.DATA,
                1,
                {"t": "test.note", "i": i, "pad": os.urandom(size)},
            )
            raws.append(outcome.accepted[0].event.raw)
    return raws


def refusal(call: Callable[[], Any], code: CloseCode) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        call()
    assert info.value.code is code, info.value
    return info.value


def tampered(raw: bytes) -> bytes:
    """The same event with one byte of its sealed body flipped (the signature is kept)."""
    event = decode_event(raw)
    body = bytearray(event.body)
    body[len(body) // 2] ^= 0x01
    return encode_wire(encode_signed(event.header, bytes(body)), event.sig)


def resigned(raw: bytes, signer: SigningKey) -> bytes:
    """The same signed bytes under somebody else's signature."""
    event = decode_event(raw)
    return encode_wire(event.signed, signer.sign(event.signed))


# --- convergence --------------------------------------------------------------------------------


def test_two_sessions_converge(trio: list[Replica]) -> None:
    a, b, _ = trio
    shared = a.engine.create_doc("Shared plan", "from a\n")
    a.engine.flush()
    notes = b.engine.create_doc("B's notes", "b1\n")
    b.engine.append_text(notes, "b2\n")
    b.engine.flush()

    wire = Wire(session(a, True), session(b, False)).start().settle()
    assert wire.x.settled and wire.y.settled
    assert wire.x.state is State.SYNCING and wire.y.state is State.SYNCING
    assert vv(a) == vv(b)
    assert documents(a) == documents(b)
    assert wire.x.stats.events_sent == wire.y.stats.events_stored > 0
    assert wire.y.stats.events_sent == wire.x.stats.events_stored > 0

    # Concurrent edits of one document on both sides, then a new connection.
    a.engine.append_text(shared, "a again\n")
    b.engine.append_text(shared, "b was here\n")
    a.engine.flush()
    b.engine.flush()
    Wire(session(b, True), session(a, False)).start().settle()
    assert vv(a) == vv(b)
    assert documents(a) == documents(b)
    body = str(a.engine.open(shared).body)
    assert "a again\n" in body and "b was here\n" in body
    assert walk(a.store, a.engine.keyring).ok and walk(b.store, b.engine.keyring).ok


def test_live_push_after_catch_up(trio: list[Replica]) -> None:
    a, b, _ = trio
    wire = Wire(session(a, True), session(b, False)).start().settle()
    assert wire.x.sent_caught_up and wire.x.peer_caught_up
    assert wire.x.local_changed() == []  # nothing new: nothing to push
    doc = a.engine.create_doc("Live", "typed on a\n")
    a.engine.flush()
    frames = wire.x.local_changed()
    assert [type(decode(f)) for f in frames] == [Events]
    wire.to_y.extend(frames)
    wire.settle()
    assert str(b.engine.open(doc).body) == "typed on a\n"
    assert vv(a) == vv(b)
    assert wire.x.settled


def test_three_replicas_through_each_other(trio: list[Replica]) -> None:
    a, b, c = trio
    for replica in trio:
        doc = replica.engine.create_doc(f"by {replica.name}", f"hello from {replica.name}\n")
        replica.engine.append_text(doc, "second line\n")
        replica.engine.flush()
    # b was added before c: until it learns c's member.add from a, it refuses c.
    refusal(Wire(session(c, True), session(b, False)).start().settle, CloseCode.NOT_MEMBER)
    Wire(session(a, True), session(b, False)).start().settle()
    Wire(session(c, True), session(b, False)).start().settle()
    Wire(session(a, True), session(c, False)).start().settle()
    assert vv(a) == vv(b) == vv(c)
    assert documents(a) == documents(b) == documents(c)
    assert len(documents(a)) == 3
    for replica in trio:
        assert walk(replica.store, replica.engine.keyring).ok


def test_replaying_a_settled_connection_moves_nothing(trio: list[Replica]) -> None:
    a, b, _ = trio
    bulk(a, 50)
    Wire(session(a, True), session(b, False)).start().settle()
    again = Wire(session(b, True), session(a, False)).start().settle()
    assert again.x.stats.events_sent == again.y.stats.events_sent == 0
    assert again.x.settled and again.y.settled


@pytest.mark.parametrize("cut", [1, 3, 5, 6, 7, 9])
def test_a_broken_connection_loses_nothing(trio: list[Replica], cut: int) -> None:
    a, b, _ = trio
    bulk(a, 1300)
    bulk(b, 600)
    first = Wire(session(a, True), session(b, False)).start()
    for _ in range(cut):
        first.step()
    # The connection drops here, frames in flight are lost; the next one resumes.
    second = Wire(session(b, True), session(a, False)).start().settle()
    assert second.x.settled and second.y.settled
    assert vv(a) == vv(b)
    assert walk(a.store, a.engine.keyring).ok and walk(b.store, b.engine.keyring).ok
    assert a.store.pending_count() == b.store.pending_count() == 0


# --- the relay's blind port ---------------------------------------------------------------------


def test_through_an_in_process_relay(trio: list[Replica], tmp_path: Path) -> None:
    a, b, _ = trio
    doc = a.engine.create_doc("Via relay", "secret body\n")
    a.engine.flush()
    relay = Relay(tmp_path / "relay")
    try:
        vault = relay.vault(a.log.vault_id)
        up = Wire(
            session(a, True),
            Session(relay.signer, RelayPort(vault), "relay", initiator=False, clock=time.monotonic),
        )
        up.start().settle()
        assert vv(a) == {a_: (h.seq, h.id) for a_, h in vault.log.store.version_vector().items()}
        down = Wire(
            session(b, True),
            Session(relay.signer, RelayPort(vault), "relay", initiator=False, clock=time.monotonic),
        )
        down.start().settle()
        assert vv(b) == vv(a)
        assert str(b.engine.open(doc).body) == "secret body\n"
        # A key that is no member is refused once the vault exists on the relay.
        stranger = Session(
            SigningKey.generate(), ReplicaPort(b), "full", initiator=True, clock=time.monotonic
        )
        relay_side = Session(
            relay.signer, RelayPort(vault), "relay", initiator=False, clock=time.monotonic
        )
        refusal(Wire(stranger, relay_side).start().settle, CloseCode.NOT_MEMBER)
    finally:
        relay.close()


def test_relay_quota_counts_what_it_parks(trio: list[Replica], tmp_path: Path) -> None:
    """What is not a member's "stays pending and counts against the vault's quota": a member
    connection uploading events signed by strangers hits the quota. (Before f5cad04 the
    pending area grew without bound, up to MAX_PENDING events of up to 8 MB each.)"""
    a = trio[0]
    quota = 200_000
    relay = Relay(tmp_path / "relay", quota=quota)
    try:
        vault = relay.vault(a.log.vault_id)
        relay_side = Session(
            relay.signer, RelayPort(vault), "relay", initiator=False, clock=time.monotonic
        )
        Wire(session(a, True), relay_side).start().settle()
        strangers = [SigningKey.generate() for _ in range(40)]
        junk = [
            author_event(
                key,
                a.engine.keyring,
                a.log.vault_id,
                Position(1, bytes(32), 10),
                now_ms(),
                Kind.DATA,
                1,
                {"t": "junk", "pad": os.urandom(20_000)},
            ).raw
            for key in strangers
        ]
        with pytest.raises(ProtocolError) as info:
            for n, start in enumerate(range(0, len(junk), 4), start=100):
                relay_side.receive(encode(Events(n, tuple(junk[start : start + 4]))))
        assert info.value.code is CloseCode.QUOTA_EXCEEDED
        held = vault.log.store.query_one(
            "SELECT (SELECT coalesce(sum(length(raw)), 0) FROM pending)"
            " + (SELECT coalesce(sum(coalesce(pack_len, length(raw))), 0) FROM events)"
        )
        assert held is not None and 0 < held[0] <= quota
    finally:
        relay.close()


# --- refusals -----------------------------------------------------------------------------------


def test_a_non_member_key_is_refused(trio: list[Replica]) -> None:
    a, b, _ = trio
    before = vv(a)
    stranger = SigningKey.generate()
    # The stranger dials a member (it knows the vault id; b's store gives it the vault).
    wire = Wire(session(b, True, signer=stranger), session(a, False))
    error = refusal(wire.start().settle, CloseCode.NOT_MEMBER)
    assert "not a member" in error.reason
    assert wire.y.state is State.CLOSED
    # A member dialing a stranger that claims to be a full replica refuses it too.
    refusal(
        Wire(session(a, True), session(b, False, signer=stranger)).start().settle,
        CloseCode.NOT_MEMBER,
    )
    assert vv(a) == before


def test_wrong_vault(make_replica: Callable[[str], Replica]) -> None:
    a, other = make_replica("a"), make_replica("other")
    refusal(Wire(session(a, True), session(other, False)).start().settle, CloseCode.UNKNOWN_VAULT)
    x = session(a, False)
    x.start()
    hello = Hello(PROTOCOL_VERSION, other.log.vault_id, other.engine.me, "full", os.urandom(32))
    refusal(lambda: x.receive(encode(hello)), CloseCode.UNKNOWN_VAULT)


def _bad_auths(a: Replica, b: Replica, c: Replica, challenge: bytes) -> dict[str, bytes]:
    vault = a.log.vault_id
    right = auth_transcript(vault, challenge, b.engine.me, a.engine.me)
    return {
        "zeros": bytes(64),
        "other challenge": b.engine.signer.sign(
            auth_transcript(vault, os.urandom(32), b.engine.me, a.engine.me)
        ),
        "other member's key": c.engine.signer.sign(right),
        "swapped roles": b.engine.signer.sign(
            auth_transcript(vault, challenge, a.engine.me, b.engine.me)
        ),
        "other vault": b.engine.signer.sign(
            auth_transcript(os.urandom(32), challenge, b.engine.me, a.engine.me)
        ),
        "flipped bit": bytes([b.engine.signer.sign(right)[0] ^ 1])
        + b.engine.signer.sign(right)[1:],
    }


@pytest.mark.parametrize(
    "variant",
    [
        "zeros",
        "other challenge",
        "other member's key",
        "swapped roles",
        "other vault",
        "flipped bit",
    ],
)
def test_bad_auth_signature(trio: list[Replica], variant: str) -> None:
    a, b, c = trio
    x, y = session(a, True), session(b, False)
    hello_x, hello_y = x.start(), y.start()
    y.receive(hello_x[0])  # y's honest AUTH is dropped; a forged one is sent instead
    x.receive(hello_y[0])
    challenge = decode(hello_x[0])
    assert isinstance(challenge, Hello)
    forged = _bad_auths(a, b, c, challenge.challenge)[variant]
    error = refusal(lambda: x.receive(encode(Auth(forged))), CloseCode.AUTH_FAILED)
    assert "does not verify" in error.reason
    assert x.state is State.CLOSED
    assert x.receive(encode(CaughtUp())) == []  # a closed session ignores everything


def test_handshake_order_is_enforced(trio: list[Replica]) -> None:
    a, b, _ = trio
    x = session(a, True)
    x.start()
    refusal(lambda: x.receive(encode(Auth(bytes(64)))), CloseCode.MALFORMED)
    for early in (Have(()), Events(1, ()), Ack(1), CaughtUp()):
        y = session(a, True)
        y.start()
        with pytest.raises(ProtocolError) as info:
            y.receive(encode(early))
        assert info.value.code is CloseCode.MALFORMED
    # A second HELLO, a second HAVE.
    wire = Wire(session(a, True), session(b, False))
    wire.handshake_only()
    refusal(
        lambda: wire.x.receive(
            encode(Hello(PROTOCOL_VERSION, a.log.vault_id, b.engine.me, "full", bytes(32)))
        ),
        CloseCode.MALFORMED,
    )
    wire2 = Wire(session(a, True), session(b, False))
    _, have_y2 = wire2.handshake_only()
    wire2.x.receive(have_y2[0])
    refusal(lambda: wire2.x.receive(have_y2[0]), CloseCode.MALFORMED)


def test_version_and_self_connection(trio: list[Replica]) -> None:
    a, _, _ = trio
    x = session(a, True)
    x.start()
    hello = Hello(PROTOCOL_VERSION + 1, a.log.vault_id, os.urandom(32), "full", bytes(32))
    refusal(lambda: x.receive(encode(hello)), CloseCode.VERSION)
    refusal(Wire(session(a, True), session(a, False)).start().settle, CloseCode.SELF)


def test_peer_error_frame_closes(trio: list[Replica]) -> None:
    a, b, _ = trio
    wire = Wire(session(a, True), session(b, False))
    wire.handshake_only()
    error = refusal(
        lambda: wire.x.receive(encode(Error(int(CloseCode.QUOTA_EXCEEDED), "full up"))),
        CloseCode.QUOTA_EXCEEDED,
    )
    assert "peer closed: full up" in error.reason
    assert wire.x.state is State.CLOSED
    frame = wire.y.error_frame(CloseCode.BAD_EVENT, "x" * 2000)
    assert decode(frame) == Error(int(CloseCode.BAD_EVENT), "x" * 500)
    assert wire.y.state is State.CLOSED
    unknown = Wire(session(a, True), session(b, False))
    unknown.handshake_only()
    refusal(lambda: unknown.x.receive(encode(Error(12345, "?"))), CloseCode.INTERNAL)


# --- bad events ---------------------------------------------------------------------------------


def _victim_batch(b: Replica, how: str, other: Replica) -> tuple[list[bytes], int]:
    """Six new events of b, one of them spoiled; returns the batch and the spoiled index."""
    raws = bulk(b, 6, size=64)
    if how == "tampered body":
        raws[2] = tampered(raws[2])
        return raws, 2
    if how == "bad last signature":
        raws[5] = resigned(raws[5], SigningKey.generate())
        return raws, 5
    if how == "not an event":
        raws[3] = b"\x92\xc4\x01x\xc4\x01y"
        return raws, 3
    if how == "other vault":
        raws.insert(3, bulk(other, 1)[0])
        return raws, 3
    assert how == "broken chain"
    event = decode_event(raws[4])
    header = event.header
    forged = type(header)(
        header.vault,
        header.author,
        header.seq,
        os.urandom(32),
        header.lamport,
        header.time_ms,
        header.epoch,
        header.kind,
        header.nonce,
    )
    unsigned = assemble(forged, event.body, bytes(64))
    raws[4] = assemble(forged, event.body, b.engine.signer.sign(unsigned.message)).raw
    return raws[:5], 4


@pytest.mark.parametrize(
    "how", ["tampered body", "bad last signature", "not an event", "other vault", "broken chain"]
)
def test_a_spoiled_batch_is_refused(
    trio: list[Replica], make_replica: Callable[[str], Replica], how: str
) -> None:
    a, b, _ = trio
    Wire(session(a, True), session(b, False)).start().settle()
    head = a.store.head(b.engine.me)
    first_new = 1 if head is None else head.seq + 1
    batch, spoiled = _victim_batch(b, how, make_replica("other"))
    wire = Wire(session(a, False), session(b, True))
    wire.handshake_only()
    refusal(lambda: wire.x.receive(encode(Events(1, tuple(batch)))), CloseCode.BAD_EVENT)
    assert wire.x.state is State.CLOSED
    # Nothing at or after the spoiled event is stored (and nothing is left pending).
    stored_up_to = a.store.head(b.engine.me)
    assert stored_up_to is None or stored_up_to.seq < first_new + spoiled
    assert a.store.pending_count() == 0
    assert walk(a.store, a.engine.keyring).ok
    # The honest events still arrive on the next connection.
    Wire(session(b, True), session(a, False)).start().settle()
    assert vv(a) == vv(b)


def test_an_equivocation_arriving_by_sync_is_kept_and_freezes_the_author(
    trio: list[Replica],
) -> None:
    """b signs two different events at one seq; a gets one, then the other by sync: both are
    kept as evidence, b is frozen, and nothing more of b's is accepted."""
    a, b, _ = trio
    Wire(session(a, True), session(b, False)).start().settle()
    position = b.log.next_position(b.engine.me)
    honest = bulk(b, 1)[0]
    fork = author_event(
        b.engine.signer,
        b.engine.keyring,
        b.log.vault_id,
        position,
        now_ms(),
        Kind.DATA,
        1,
        {"t": "test.note", "fork": True},
    ).raw
    assert decode_event(fork).seq == decode_event(honest).seq and fork != honest
    Wire(session(a, True), session(b, False)).start().settle()
    wire = Wire(session(a, False), session(b, True))
    wire.handshake_only()
    assert wire.x.receive(encode(Events(1, (fork,)))) == []  # kept, not refused: its ACK
    assert [decode(f) for f in wire.x.due_acks(now=True)] == [Ack(1)]  # waits for company
    assert b.engine.me in a.log.frozen
    assert len(a.store.equivocations()) == 2
    problems = walk(a.store, a.engine.keyring).problems
    assert {p.kind for p in problems} == {"equivocation"}
    later = bulk(b, 1)
    refusal(lambda: wire.x.receive(encode(Events(2, tuple(later)))), CloseCode.BAD_EVENT)


# --- flow control and limits --------------------------------------------------------------------


def test_a_peer_that_never_acks_gets_at_most_window_batches(trio: list[Replica]) -> None:
    a, b, _ = trio
    bulk(a, (WINDOW + 2) * BATCH_TARGET_EVENTS)
    clock = Clock()
    wire = Wire(session(a, True, clock=clock), session(b, False, clock=clock))
    _, have_y = wire.handshake_only()
    in_flight: set[int] = set()

    def sent(frames: list[bytes]) -> None:
        for frame in frames:
            message = decode(frame)
            if isinstance(message, Events):
                in_flight.add(message.batch)
        assert len(in_flight) <= WINDOW

    sent(wire.x.receive(have_y[0]))
    assert len(in_flight) == WINDOW  # more events than WINDOW batches hold
    # However often it is woken, and whatever else the peer says, nothing more goes out.
    for _ in range(20):
        sent(wire.x.local_changed())
    bulk(a, 10)
    sent(wire.x.local_changed())
    sent(wire.x.receive(encode(CaughtUp())))
    assert len(in_flight) == WINDOW
    assert not wire.x.settled
    # An ACK opens exactly one slot.
    oldest = min(in_flight)
    in_flight.discard(oldest)
    sent(wire.x.receive(encode(Ack(oldest))))
    assert len(in_flight) == WINDOW
    # A stalled peer is dropped after the ack timeout.
    clock.now += ACK_TIMEOUT_S - 1
    wire.x.check_timeouts()
    clock.now += 2
    refusal(wire.x.check_timeouts, CloseCode.TIMEOUT)


def test_a_slow_link_that_keeps_acking_is_not_timed_out(trio: list[Replica]) -> None:
    """The ACK timeout counts from the last progress: a peer that takes 50 s per batch keeps
    a full window in flight for minutes and is kept, and dropped 60 s after it stops."""
    a, b, _ = trio
    bulk(a, (WINDOW + 6) * BATCH_TARGET_EVENTS)
    clock = Clock()
    wire = Wire(session(a, True, clock=clock), session(b, False, clock=clock))
    _, have_y = wire.handshake_only()
    in_flight = [m.batch for m in map(decode, wire.x.receive(have_y[0])) if isinstance(m, Events)]
    assert len(in_flight) == WINDOW
    started = clock.now
    for _ in range(6):  # one batch per 50 s: 300 s with a full window in flight
        clock.now += 50
        wire.x.check_timeouts()
        frames = wire.x.receive(encode(Ack(in_flight.pop(0))))
        in_flight += [m.batch for m in map(decode, frames) if isinstance(m, Events)]
        assert len(in_flight) == WINDOW
    assert clock.now - started == 300
    clock.now += ACK_TIMEOUT_S - 1
    wire.x.check_timeouts()
    clock.now += 2
    refusal(wire.x.check_timeouts, CloseCode.TIMEOUT)


def test_one_ack_covers_every_batch_before_it(trio: list[Replica]) -> None:
    """A receiver acks every ACK_EVERY batches, or once ACK_DELAY_S passed, or when the
    sender says it is caught up; an ACK frees every batch up to the one it names."""
    a, b, _ = trio
    bulk(a, (WINDOW + 2) * BATCH_TARGET_EVENTS)
    clock = Clock()
    wire = Wire(session(a, True, clock=clock), session(b, False, clock=clock))
    _, have_y = wire.handshake_only()
    batches = [m for m in map(decode, wire.x.receive(have_y[0])) if isinstance(m, Events)]
    assert len(batches) == WINDOW
    replies = [decode(f) for m in batches[: ACK_EVERY - 1] for f in wire.y.receive(encode(m))]
    assert replies == [] and wire.y.ack_wait() == pytest.approx(ACK_DELAY_S)
    clock.now += ACK_DELAY_S / 2
    assert wire.y.due_acks() == [] and wire.y.ack_wait() == pytest.approx(ACK_DELAY_S / 2)
    clock.now += ACK_DELAY_S / 2 + 0.001
    assert [decode(f) for f in wire.y.due_acks()] == [Ack(batches[ACK_EVERY - 2].batch)]
    assert wire.y.ack_wait() is None
    replies = [decode(f) for m in batches[ACK_EVERY - 1 :] for f in wire.y.receive(encode(m))]
    assert replies == [Ack(batches[2 * ACK_EVERY - 2].batch)]  # ACK_EVERY more: at once
    assert wire.y.ack_wait() is not None  # the last batch waits for company ...
    assert [decode(f) for f in wire.y.receive(encode(CaughtUp()))] == [Ack(batches[-1].batch)]
    assert wire.y.ack_wait() is None  # ... unless the sender says it is caught up
    # The sender: an old ACK frees nothing more, a cumulative one frees all before it.
    sent = [m for m in map(decode, wire.x.receive(encode(Ack(batches[1].batch))))]
    assert len([m for m in sent if isinstance(m, Events)]) == 2  # the two slots ACK 2 freed
    assert wire.x.receive(encode(Ack(batches[0].batch))) == []
    refusal(lambda: wire.x.receive(encode(Ack(10**6))), CloseCode.MALFORMED)


def test_window_holds_with_acks_out_of_order(trio: list[Replica]) -> None:
    a, b, _ = trio
    bulk(a, 9000)
    wire = Wire(session(a, True), session(b, False))
    have_x, have_y = wire.handshake_only()
    rng = random.Random(7)
    outstanding: set[int] = set()
    to_b: deque[bytes] = deque()
    held_acks: list[bytes] = []

    def from_a(frames: list[bytes]) -> None:
        for frame in frames:
            message = decode(frame)
            if isinstance(message, Events):
                outstanding.add(message.batch)
            to_b.append(frame)
        assert len(outstanding) <= WINDOW

    from_a(wire.x.receive(have_y[0]))
    for frame in wire.y.receive(have_x[0]):
        from_a(wire.x.receive(frame))
    while to_b or held_acks:
        while to_b:
            for reply in wire.y.receive(to_b.popleft()):
                message = decode(reply)
                if isinstance(message, Ack):
                    held_acks.append(reply)  # acks come back late and out of order
                else:
                    from_a(wire.x.receive(reply))
        held_acks.extend(wire.y.due_acks(now=True))  # what the driver sends after ACK_DELAY_S
        rng.shuffle(held_acks)
        for _ in range(rng.randint(1, 3)):
            if held_acks:
                ack = held_acks.pop()
                acked = decode(ack)
                assert isinstance(acked, Ack)
                outstanding -= {n for n in outstanding if n <= acked.batch}  # cumulative
                from_a(wire.x.receive(ack))
    assert vv(a) == vv(b)
    assert wire.x.settled


def test_handshake_timeout(trio: list[Replica]) -> None:
    a, _, _ = trio
    clock = Clock()
    x = session(a, True, clock=clock)
    x.start()
    clock.now += HANDSHAKE_TIMEOUT_S - 0.5
    x.check_timeouts()
    clock.now += 1
    refusal(x.check_timeouts, CloseCode.TIMEOUT)


def test_frame_rate_limit(trio: list[Replica]) -> None:
    a, b, _ = trio
    clock = Clock()
    wire = Wire(session(a, True, clock=clock), session(b, False, clock=clock))
    wire.handshake_only()
    ping = encode(CaughtUp())
    with pytest.raises(ProtocolError) as info:
        for _ in range(int(FRAME_BURST) + 10):
            wire.x.receive(ping)
    assert info.value.code is CloseCode.RATE_LIMITED
    # With time passing at a sane rate the same number of frames is fine.
    slow = Wire(session(a, True, clock=clock), session(b, False, clock=clock))
    slow.handshake_only()
    for _ in range(int(FRAME_BURST) + 10):
        clock.now += 0.001
        slow.x.receive(ping)


# --- segment verification -----------------------------------------------------------------------


def anchor(replica: Replica, author: bytes, seq: int) -> bool:
    row = replica.store.event_at(author, seq)
    assert row is not None
    return row.anchor


@pytest.fixture
def thousand(trio: list[Replica]) -> tuple[Replica, Replica, list[bytes]]:
    """b holds all of a's log; a then writes 1000 more, contiguous."""
    a, b, _ = trio
    Wire(session(a, True), session(b, False)).start().settle()
    return a, b, bulk(a, 1000)


def test_a_contiguous_segment_is_accepted_and_walks_clean(
    thousand: tuple[Replica, Replica, list[bytes]],
) -> None:
    a, b, raws = thousand
    outcome = b.log.accept_batch(raws)
    assert len(outcome.accepted) == 1000
    assert vv(a) == vv(b)
    report = walk(b.store, b.engine.keyring)
    assert report.ok, report.problems
    first, last = decode_event(raws[0]), decode_event(raws[-1])
    # One signature authenticated the run: only its tail is an anchor.
    assert anchor(b, a.engine.me, last.seq)
    assert not anchor(b, a.engine.me, first.seq)
    anchors = b.store.query_one(
        "SELECT count(*) FROM events WHERE author = ? AND seq >= ? AND anchor",
        (a.engine.me, first.seq),
    )
    assert anchors == (1,)
    # What b serves onward ends at anchors, so its peers can verify it the same way.
    served = ReplicaPort(b).serving_batch(a.engine.me, first.seq, last.seq)
    assert 0 < len(served) <= MAX_BATCH_EVENTS
    assert anchor(b, a.engine.me, decode_event(served[-1]).seq)


def test_a_segment_whose_last_signature_is_bad_is_refused(
    thousand: tuple[Replica, Replica, list[bytes]],
) -> None:
    _, b, raws = thousand
    before = vv(b)
    for spoil in (
        lambda raw: resigned(raw, SigningKey.generate()),
        lambda raw: encode_wire(decode_event(raw).signed, bytes(64)),
        tampered,
    ):
        with pytest.raises(BadSignatureError):
            b.log.accept_batch([*raws[:-1], spoil(raws[-1])])
        assert vv(b) == before
        assert b.store.pending_count() == 0
    # A tampered event in the middle breaks the chain there; its own signature then fails.
    with pytest.raises(BadSignatureError):
        b.log.accept_batch([*raws[:500], tampered(raws[500]), *raws[501:]])
    assert vv(b) == before


def test_segments_of_two_authors_interleaved(trio: list[Replica]) -> None:
    a, b, c = trio
    Wire(session(a, True), session(c, False)).start().settle()
    from_a, from_c = bulk(a, 300), bulk(c, 300)
    batch = from_a[:150] + from_c[:100] + from_a[150:] + from_c[100:]
    Wire(session(a, True), session(b, False)).start().settle()  # b learns c's membership
    b.log.accept_batch(batch)
    assert vv(b)[a.engine.me] == vv(a)[a.engine.me]
    assert vv(b)[c.engine.me] == vv(c)[c.engine.me]
    assert walk(b.store, b.engine.keyring).ok


def test_a_garbage_signature_inside_a_segment_leaves_a_clean_store(
    trio: list[Replica], thousand: tuple[Replica, Replica, list[bytes]]
) -> None:
    """Segment verification authenticates the *signed bytes* of every event of a run; the
    ``sig`` field of the events before the tail is never looked at and is stored as received.
    A peer can hand over authentic events with garbage signatures there: either the batch is
    refused, or the store must still verify clean (the walker vouches for mid-segment events
    through the chain, as the accept path did). Before f5cad04 ``verify`` flagged them."""
    _, b, raws = thousand
    c = trio[2]
    spoiled = [*raws[:400], encode_wire(decode_event(raws[400]).signed, bytes(64)), *raws[401:]]
    try:
        outcome = b.log.accept_batch(spoiled)
    except BadSignatureError:
        return  # refusing it is fine
    assert len(outcome.accepted) == 1000 and b.store.pending_count() == 0
    report = walk(b.store, b.engine.keyring)
    assert report.ok, [(p.seq, p.reason) for p in report.problems]
    # What b serves onward is accepted by its peers, and verifies clean there too.
    Wire(session(c, True), session(b, False)).start().settle()
    assert vv(c) == vv(b)
    report = walk(c.store, c.engine.keyring)
    assert report.ok, [(p.seq, p.reason) for p in report.problems]


# --- a daemon and a CLI command on one home -----------------------------------------------------


def test_a_cli_write_racing_the_daemon_keeps_every_update(
    trio: list[Replica], tmp_path: Path
) -> None:
    """``shoal serve`` stores a peer's update to a document while ``shoal append`` on the same
    home has the document loaded but has not written yet. Before af72eb7 the appending
    process's first transaction did not notice the daemon's commit (the store took its
    ``data_version`` baseline only at the first ``atomic()``), so its live document missed
    the update while the snapshot it wrote on close claimed to cover it: every later
    ``shoal cat`` on that home lacked the peer's edit until ``rebuild``."""
    a, b, _ = trio
    doc = a.engine.create_doc("Shared", "start\n")
    a.engine.flush()
    Wire(session(a, True), session(b, False)).start().settle()
    b.engine.append_text(doc, "from b\n")
    b.engine.flush()
    home = a.home
    a.close()
    cli = open_replica(home)  # `shoal append` on a's home
    cli.engine.append_text(doc, "from the cli\n")  # loaded and edited, not yet written
    daemon = open_replica(home)  # `shoal serve` on a's home, syncing with b
    try:
        Wire(session(daemon, True), session(b, False)).start().settle()
    finally:
        daemon.close()
    cli.close()  # flushes the edit and snapshots the document
    reader = open_replica(home)  # `shoal cat`
    try:
        body = str(reader.engine.open(doc).body)
        assert "from b\n" in body and "from the cli\n" in body, body
    finally:
        reader.close()


def events_frames_a_to_b(a: Replica, b: Replica) -> list[Events]:
    """Sync ``a`` -> ``b``; the EVENTS frames ``b`` received, in order."""
    wire = Wire(session(a, True), session(b, False)).start()
    frames: list[Events] = []
    while wire.to_y or wire.to_x:
        message = decode(wire.to_y[0]) if wire.to_y else None
        if isinstance(message, Events):
            frames.append(message)
        wire.step()
    return frames


def test_small_runs_of_many_authors_share_a_frame(trio: list[Replica]) -> None:
    """Short runs of several authors travel in one EVENTS frame (one transaction, one ACK);
    a frame fills up to its limit, cutting a run at an anchor; each run ends at an anchor."""
    a, b, c = trio
    Wire(session(a, True), session(b, False)).start().settle()
    Wire(session(a, True), session(c, False)).start().settle()
    for runs in ((10, 7), (BATCH_TARGET_EVENTS - 3, 7)):
        bulk(a, runs[0])
        bulk(c, runs[1])
        Wire(session(c, True), session(a, False)).start().settle()
        frames = events_frames_a_to_b(a, b)
        authors = [{decode_event(r).author for r in f.events} for f in frames]
        if runs[0] + runs[1] <= BATCH_TARGET_EVENTS:
            assert authors == [{a.engine.me, c.engine.me}]
        else:  # a frame fills up to its limit (cutting a run at an anchor) or a run that
            # does not fit starts the next one: which, depends on which author sorts first
            sizes = [len(f.events) for f in frames]
            assert sizes in (
                [BATCH_TARGET_EVENTS, sum(runs) - BATCH_TARGET_EVENTS],
                [runs[0], runs[1]],
            )
        for f in frames:  # each author's run in a frame ends at an event a holds as an anchor
            ends: dict[bytes, int] = {}
            for raw in f.events:
                event = decode_event(raw)
                ends[event.author] = event.seq
            assert all(anchor(a, author, seq) for author, seq in ends.items())
        assert vv(a) == vv(b)
