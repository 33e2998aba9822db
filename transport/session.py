"""The sync protocol as a pure state machine: frames in, frames out, no I/O.

Both ends run the same ``Session``. Order of a connection::

    both:   HELLO(version, vault, replica id, role, challenge)
    both:   AUTH(sig over the other's challenge)  -> authorize the peer (roster)
    both:   HAVE(version vector)
    both:   EVENTS(batch n, raw events...) ...    <- ACK(n): all up to n; WINDOW unacked at most
    both:   CAUGHT_UP once nothing the peer lacked remains; then live EVENTS as logs grow
    either: ERROR(code, reason) and close

Resumable by construction: nothing is assumed across connections; each starts from the two
version vectors, so a broken connection loses nothing. Like h11, this module only turns
bytes into decisions; ``transport.ws`` moves the bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Protocol

from eventlog.accept import Outcome
from eventlog.crypto import SigningKey, signature_ok
from eventlog.errors import (
    DecodeError,
    IntegrityError,
    MembershipError,
    PendingFullError,
    ShoalError,
)
from transport.messages import (
    CHALLENGE_BYTES,
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
    Message,
    Probe,
    Proof,
    ProtocolError,
    decode,
    encode,
)

WINDOW: Final = 8
"""Batches in flight before the sender waits for acknowledgements (flow control)."""
BATCH_TARGET_EVENTS: Final = MAX_BATCH_EVENTS
"""Anchors are at most MAX_BATCH_EVENTS apart, so a full-size batch always ends at one."""
BATCH_TARGET_BYTES: Final = 4 * 1024 * 1024
"""A batch of big events (file chunks) is one transaction and one fsync on the receiver:
1 MiB batches made a 256 MiB file 256 commits in each of the relay and B (W4c: 5.3 s end to
end; 4.7-4.8 s with 4 MiB)."""
HANDSHAKE_TIMEOUT_S: Final = 15.0
ACK_TIMEOUT_S: Final = 60.0
"""How long batches may wait in flight with no ACK freeing any of them: a stalled peer.
Counted from the last progress, not from when each batch was queued, so a slow link that
takes minutes to drain a full window (8 x 4 MiB at 1 Mbit/s is ~4.5 minutes) is not cut:
it only needs to deliver one batch per minute."""
ACK_EVERY: Final = WINDOW // 2
"""Batches a receiver may leave unacknowledged; then it acks at once, so a sender with a
full window always has half of it free again before its queue runs dry."""
ACK_DELAY_S: Final = 0.25
"""How long an ACK waits for later batches to share it (TCP's delayed ACK). A relay fanning
live events out to 50 replicas got one ACK per event back: handling them was ~30 % of its
CPU, and the queueing behind them most of the fan-out latency (design note 24)."""
FRAMES_PER_SECOND: Final = 2000.0
FRAME_BURST: Final = 4000.0


class LogPort(Protocol):
    """What a session needs from the local side (a full replica or a relay's vault)."""

    @property
    def vault_id(self) -> bytes: ...

    def version_vector(self) -> Mapping[bytes, tuple[int, bytes]]:
        """Author -> (seq, id) of what we hold; shared: the caller must not change it."""
        ...

    def serving_batch(
        self,
        author: bytes,
        first: int,
        last: int,
        max_events: int = BATCH_TARGET_EVENTS,
        max_bytes: int = BATCH_TARGET_BYTES,
        run_on: bool = True,
    ) -> list[bytes]:
        """Raw events ``first..`` (at most ``last``) of one author, ending at an anchor.

        About ``max_events`` / ``max_bytes`` of them: fewer to end at an anchor, more if the
        first anchor lies further (never more than ``MAX_BATCH_EVENTS``) — or, without
        ``run_on``, none.
        """
        ...

    def accept_batch(self, raws: list[bytes]) -> Outcome:
        """Store a batch through the accept path. Raises ShoalError."""
        ...

    def may_connect(self, peer: bytes, role: str, initiator: bool) -> bool: ...

    def event_at(self, author: bytes, seq: int) -> bytes | None: ...

    def refuses(self, author: bytes, seq: int) -> bool:
        """Would we refuse this author's event at ``seq`` (author frozen, or removed before it)?"""
        ...


class State(Enum):
    HANDSHAKE = "handshake"
    SYNCING = "syncing"
    CLOSED = "closed"


def auth_transcript(vault: bytes, challenge: bytes, signer: bytes, verifier: bytes) -> bytes:
    """What a peer signs to prove its key: bound to vault, both ids and the fresh challenge."""
    return hashlib.blake2b(
        b"shoal/v1/sync-auth" + vault + challenge + signer + verifier, digest_size=32
    ).digest()


@dataclass
class Stats:
    events_sent: int = 0
    events_received: int = 0
    events_stored: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass
class Session:
    """One connection's protocol state. Feed it frames; send what it returns."""

    signer: SigningKey
    port: LogPort
    role: str
    initiator: bool
    clock: Callable[[], float]
    audit: bool = False
    """Audit mode (``shoal backup``): report and answer, never push our events."""
    state: State = State.HANDSHAKE
    peer: bytes | None = None
    peer_role: str = ""
    peer_heads: dict[bytes, int] = field(default_factory=dict)
    """How far we believe the peer holds each log (its HAVE, then what flowed)."""
    peer_have: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    peer_caught_up: bool = False
    sent_caught_up: bool = False
    proofs: list[bytes] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    _challenge: bytes = field(default_factory=lambda: os.urandom(CHALLENGE_BYTES))
    _peer_challenge: bytes | None = None
    _authed_peer: bool = False
    _have_received: bool = False
    _next_batch: int = 1
    _in_flight: deque[int] = field(default_factory=deque)
    """Batches sent and not yet acknowledged, oldest first."""
    _waiting_since: float = 0.0
    """When the in-flight batches last made progress: the first of them was sent into an
    empty window, or an ACK freed some (the ACK timeout counts from here)."""
    _ack_upto: int = 0
    """The last batch received; an ACK of it covers every batch before it."""
    _unacked: int = 0
    _unacked_since: float = 0.0
    _sent_all_of: object = None
    """The version vector (the port's object) of which the peer was last sent everything."""
    _started: float = 0.0
    _tokens: float = FRAME_BURST
    _tokens_at: float = 0.0

    # --- driving the session ------------------------------------------------------------------

    def start(self) -> list[bytes]:
        self._started = self._tokens_at = self.clock()
        hello = Hello(
            PROTOCOL_VERSION, self.port.vault_id, self.signer.public, self.role, self._challenge
        )
        return self._out([hello])

    def receive(self, frame: bytes) -> list[bytes]:
        """Process one frame from the peer. Raises ``ProtocolError`` to close."""
        if self.state is State.CLOSED:
            return []
        self.stats.bytes_received += len(frame)
        self._rate_limit()
        message = decode(frame)
        try:
            return self._out(self._handle(message))
        except ProtocolError:
            self.state = State.CLOSED
            raise

    def local_changed(self) -> list[bytes]:
        """The local log grew (a local edit, or events from another peer): push them."""
        if self.state is not State.SYNCING or not self._have_received:
            return []
        return self._out(self._pump())

    def ack_wait(self) -> float | None:
        """Seconds until a delayed ACK is due (0 if it is), or None if nothing awaits one."""
        if not self._unacked:
            return None
        return max(0.0, self._unacked_since + ACK_DELAY_S - self.clock())

    def due_acks(self, now: bool = False) -> list[bytes]:
        """The delayed ACK once it is due (or ``now``): the driver asks when ``ack_wait`` ends."""
        return self._out(self._ack(force=now))

    def check_timeouts(self) -> None:
        """Raise ``ProtocolError(TIMEOUT)`` if the peer stalls the handshake or the acks."""
        now = self.clock()
        if self.state is State.HANDSHAKE and now - self._started > HANDSHAKE_TIMEOUT_S:
            raise ProtocolError(CloseCode.TIMEOUT, "handshake did not complete")
        if self._in_flight and now - self._waiting_since > ACK_TIMEOUT_S:
            raise ProtocolError(CloseCode.TIMEOUT, "peer stopped acknowledging batches")

    def error_frame(self, code: CloseCode, reason: str) -> bytes:
        self.state = State.CLOSED
        return encode(Error(int(code), reason[:500]))

    @property
    def have_received(self) -> bool:
        return self._have_received

    @property
    def settled(self) -> bool:
        """Both directions caught up and everything we sent acknowledged."""
        return self.peer_caught_up and (self.sent_caught_up or self.audit) and not self._in_flight

    def missing(self) -> dict[bytes, int]:
        """Per author, how many events the peer advertised in its HAVE that we still lack.

        Asked once the peer is caught up: it then claims to have sent everything its HAVE
        promised, so a shortfall is a gap only this comparison can see. A withheld tail leaves
        no other trace (withheld middles at least leave parked events behind). Events we would
        refuse anyway (a frozen author, a removed one past its cutoff) are not missing.
        """
        if not self._have_received:
            return {}
        ours = self.port.version_vector()
        gaps = {}
        for author, (seq, _) in self.peer_have.items():
            have = ours[author][0] if author in ours else 0
            if seq > have and not self.port.refuses(author, have + 1):
                gaps[author] = seq - have
        return gaps

    def probe(self, places: list[tuple[bytes, int]]) -> list[bytes]:
        """Ask the peer for the raw events at these places (a backup audit)."""
        return self._out([Probe(tuple(places))])

    # --- internals ----------------------------------------------------------------------------

    def _out(self, messages: list[Message]) -> list[bytes]:
        frames = [encode(m) for m in messages]
        self.stats.bytes_sent += sum(len(f) for f in frames)
        return frames

    def _rate_limit(self) -> None:
        now = self.clock()
        self._tokens = min(FRAME_BURST, self._tokens + (now - self._tokens_at) * FRAMES_PER_SECOND)
        self._tokens_at = now
        if self._tokens < 1:
            raise ProtocolError(CloseCode.RATE_LIMITED, "too many frames")
        self._tokens -= 1

    def _handle(self, message: Message) -> list[Message]:
        match message:
            case Hello():
                return self._on_hello(message)
            case Auth(sig):
                return self._on_auth(sig)
            case Error(code, reason):
                self.state = State.CLOSED
                try:
                    name = CloseCode(code)
                except ValueError:
                    name = CloseCode.INTERNAL
                raise ProtocolError(name, f"peer closed: {reason}")
        if not self._authed_peer:
            raise ProtocolError(CloseCode.MALFORMED, f"{type(message).__name__} before AUTH")
        match message:
            case Have(heads):
                return self._on_have(heads)
            case Events(batch, events):
                return self._on_events(batch, list(events))
            case Ack(batch):
                if batch >= self._next_batch:
                    raise ProtocolError(CloseCode.MALFORMED, f"ACK of batch {batch}, never sent")
                in_flight = self._in_flight
                if in_flight and in_flight[0] <= batch:
                    self._waiting_since = self.clock()
                    while in_flight and in_flight[0] <= batch:
                        in_flight.popleft()
                return self._pump()
            case CaughtUp():
                self.peer_caught_up = True
                return self._ack(force=True)  # a one-shot sync settles on it: no delay
            case Probe(places):
                return [Proof(tuple(self.port.event_at(a, s) or b"" for a, s in places))]
            case Proof(events):
                self.proofs.extend(events)
                return []
        raise ProtocolError(CloseCode.MALFORMED, f"unexpected {type(message).__name__}")

    def _on_hello(self, hello: Hello) -> list[Message]:
        if self._peer_challenge is not None:
            raise ProtocolError(CloseCode.MALFORMED, "second HELLO")
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolError(CloseCode.VERSION, f"protocol v{hello.version} not spoken")
        if hello.vault != self.port.vault_id:
            raise ProtocolError(CloseCode.UNKNOWN_VAULT, "peer is in another vault")
        if hello.replica == self.signer.public:
            raise ProtocolError(CloseCode.SELF, "connected to myself")
        self.peer, self.peer_role, self._peer_challenge = hello.replica, hello.role, hello.challenge
        transcript = auth_transcript(
            self.port.vault_id, hello.challenge, self.signer.public, hello.replica
        )
        return [Auth(self.signer.sign(transcript))]

    def _on_auth(self, sig: bytes) -> list[Message]:
        if self.peer is None or self._authed_peer:
            raise ProtocolError(CloseCode.MALFORMED, "AUTH out of order")
        transcript = auth_transcript(
            self.port.vault_id, self._challenge, self.peer, self.signer.public
        )
        if not signature_ok(self.peer, sig, transcript):
            raise ProtocolError(CloseCode.AUTH_FAILED, "challenge signature does not verify")
        if not self.port.may_connect(self.peer, self.peer_role, self.initiator):
            raise ProtocolError(CloseCode.NOT_MEMBER, "key is not a member of this vault")
        self._authed_peer = True
        self.state = State.SYNCING
        vv = self.port.version_vector()
        return [Have(tuple((a, s, i) for a, (s, i) in sorted(vv.items())))]

    def _on_have(self, heads: tuple[tuple[bytes, int, bytes], ...]) -> list[Message]:
        if self._have_received:
            raise ProtocolError(CloseCode.MALFORMED, "second HAVE")
        self._have_received = True
        self.peer_have = {a: (s, i) for a, s, i in heads}
        self.peer_heads = {a: s for a, s, _ in heads}
        return self._pump()

    def _on_events(self, batch: int, raws: list[bytes]) -> list[Message]:
        if len(raws) > MAX_BATCH_EVENTS:
            raise ProtocolError(CloseCode.FRAME_TOO_LARGE, "batch too long")
        try:
            outcome = self.port.accept_batch(raws)
        except PendingFullError as exc:
            raise ProtocolError(CloseCode.RATE_LIMITED, str(exc)) from exc
        except (DecodeError, IntegrityError, MembershipError) as exc:
            raise ProtocolError(CloseCode.BAD_EVENT, str(exc)) from exc
        except ProtocolError:
            raise
        except ShoalError as exc:
            raise ProtocolError(CloseCode.INTERNAL, str(exc)) from exc
        self.stats.events_received += len(raws)
        self.stats.events_stored += len(outcome.accepted)
        for author, seq in outcome.heads.items():  # the peer holds what it sent: no echo
            if seq > self.peer_heads.get(author, 0):
                self.peer_heads[author] = seq
        if not self._unacked:
            self._unacked_since = self.clock()
        self._ack_upto = batch
        self._unacked += 1
        return self._ack(force=self._unacked >= ACK_EVERY)

    def _ack(self, force: bool) -> list[Message]:
        """One ACK for every batch received since the last, if it is due (or ``force``)."""
        if not self._unacked:
            return []
        if not force and self.clock() - self._unacked_since < ACK_DELAY_S:
            return []
        self._unacked = 0
        return [Ack(self._ack_upto)]

    def _pump(self) -> list[Message]:
        """Send what the peer lacks, up to the flow-control window.

        A frame carries one author's run, then — while it has room — the runs of the next
        authors behind: with many replicas writing a little each (a relay's live fan-out), one
        frame, one transaction and one ACK then serve them all instead of one per author.
        Each run still ends at an anchor, so the receiver verifies one signature per run.
        """
        if self.audit or not self._have_received:
            return []
        out: list[Message] = []
        vv = self.port.version_vector()
        if vv is self._sent_all_of or len(self._in_flight) >= WINDOW:
            return out  # nothing new since everything was sent, or no room: skip the scan
        behind = sorted(a for a, (seq, _) in vv.items() if seq > self.peer_heads.get(a, 0))
        while behind and len(self._in_flight) < WINDOW:
            frame: list[bytes] = []
            size = 0
            while behind and len(frame) < BATCH_TARGET_EVENTS and size < BATCH_TARGET_BYTES:
                author = behind[0]
                first, last = self.peer_heads.get(author, 0) + 1, vv[author][0]
                raws = self.port.serving_batch(
                    author,
                    first,
                    last,
                    BATCH_TARGET_EVENTS - len(frame),
                    BATCH_TARGET_BYTES - size,
                    run_on=not frame,  # a run that does not fit waits for the next frame
                )
                if not raws:
                    if frame:
                        break
                    behind.pop(0)
                    continue
                frame += raws
                size += sum(len(r) for r in raws)
                self.peer_heads[author] = first + len(raws) - 1
                if self.peer_heads[author] < last:
                    break  # this author fills the frame
                behind.pop(0)
            if not frame:
                break
            out.append(Events(self._next_batch, tuple(frame)))
            if not self._in_flight:
                self._waiting_since = self.clock()
            self._in_flight.append(self._next_batch)
            self._next_batch += 1
            self.stats.events_sent += len(frame)
        if not behind:
            self._sent_all_of = vv  # a port that caches its vector lets the next pump skip
            if not self.sent_caught_up:
                self.sent_caught_up = True
                out.append(CaughtUp())
        return out
