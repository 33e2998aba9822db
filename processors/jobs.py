"""The job protocol: who does which piece of processor work, decided by a fold of events.

Pure logic: payload maps and dataclasses in, dataclasses out; no clock, no store, no I/O.
The runner (``processors/runner.py``) feeds it what the log holds and the local time.

Nouns:

- **job** — one unit of work, keyed by :class:`JobKey` ``(processor, version, doc, input)``
  where ``input`` is a hash of exactly what the processor reads. The same key on every
  replica means the same work, so a result anywhere in the vault is a result everywhere.
- **capability** — what a replica offers (``extract``, ``ocr``, ``embed:<model>``,
  ``llm:<model>``), advertised in ``replica.caps`` events; the latest event of each author
  (by lamport) is what it offers now.
- **claim** — ``job.claim`` with ``lease_until_ms``: "I am doing this until then".
- **result** / **failure** — ``job.result`` ends the job for good; ``job.fail`` ends one
  attempt (and, when ``permanent`` or after :attr:`Policy.max_attempts`, the job).

The claim rule (:func:`holder`) walks a job's records in the deterministic
``(lamport, author)`` order, the same on every replica whatever order they arrived in: a
claim takes the job if nobody holds it, if its author already holds it (a renewal), or if
the holder's lease had run out *by the claimant's own clock* (``time_ms`` of the claim
event); otherwise it is void — the loser stands down. So among concurrent claims the lowest
``(lamport, author)`` wins, and holders never overlap: a new holder's claim is always later
than the previous holder's lease (see the property tests).

**Clock skew.** ``time_ms`` and ``lease_until_ms`` are wall clocks of the writing replica,
and whether a lease is over *now* is judged by the local clock. Skew therefore cannot make
replicas disagree on who holds a job — the walk uses only the clocks written in the events —
it can only move *when* a takeover happens: a replica whose clock runs ``s`` ahead takes
over ``s`` early. The runner adds :attr:`Policy.grace_ms` before claiming an expired lease,
which absorbs ordinary NTP-level skew. Whatever the skew, the worst outcome is the same work
done twice, never two different answers: results are keyed by input hash and the first
result by ``(lamport, author)`` is the one everyone uses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from eventlog.errors import WrongTypeError
from eventlog.payload import Payload, field_bytes, field_int, field_str

T_CAPS: Final = "replica.caps"
T_CLAIM: Final = "job.claim"
T_RESULT: Final = "job.result"
T_FAIL: Final = "job.fail"
JOB_TYPES: Final = frozenset({T_CLAIM, T_RESULT, T_FAIL})

DOC_BYTES: Final = 16
INPUT_BYTES: Final = 32
MAX_NAME: Final = 200
MAX_REASON: Final = 500
MAX_CAPS: Final = 256


@dataclass(frozen=True, order=True, slots=True)
class JobKey:
    """What identifies a unit of work everywhere in the vault."""

    processor: str
    version: str
    doc: bytes
    input: bytes

    def short(self) -> str:
        return f"{self.processor}/{self.doc.hex()[:12]}/{self.input.hex()[:8]}"


@dataclass(frozen=True, slots=True)
class Claim:
    key: JobKey
    author: bytes
    lamport: int
    time_ms: int
    lease_until_ms: int


@dataclass(frozen=True, slots=True)
class Result:
    key: JobKey
    author: bytes
    lamport: int
    time_ms: int


@dataclass(frozen=True, slots=True)
class Failure:
    key: JobKey
    author: bytes
    lamport: int
    time_ms: int
    reason: str
    permanent: bool


JobRecord = Claim | Result | Failure


@dataclass(frozen=True, slots=True)
class Caps:
    """One ``replica.caps`` event: what ``author`` offered as of ``lamport``."""

    author: bytes
    lamport: int
    caps: frozenset[str]


# --- states --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Waiting:
    """No replica of the vault offers the capability this job needs."""

    need: str
    attempts: int = 0
    last_reason: str = ""


@dataclass(frozen=True, slots=True)
class Claimable:
    """Any replica with the capability may claim it from ``not_before_ms`` (local clock)."""

    need: str
    not_before_ms: int = 0
    attempts: int = 0
    last_reason: str = ""


@dataclass(frozen=True, slots=True)
class Claimed:
    by: bytes
    until_ms: int
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Done:
    by: bytes
    lamport: int
    time_ms: int


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str
    attempts: int
    by: bytes


JobState = Waiting | Claimable | Claimed | Done | Failed


@dataclass(frozen=True, slots=True)
class Policy:
    """The knobs of leases and retries (the runner's config; tests shorten them)."""

    lease_ms: int = 10 * 60_000
    grace_ms: int = 5_000
    """Extra wait past an expired lease before taking it over: absorbs clock skew."""
    max_attempts: int = 3
    backoff_base_ms: int = 30_000
    backoff_max_ms: int = 60 * 60_000

    def backoff_ms(self, attempts: int) -> int:
        """Exponential: base, 2·base, 4·base … after the 1st, 2nd, 3rd failed attempt."""
        if attempts <= 0:
            return 0
        return int(min(self.backoff_max_ms, self.backoff_base_ms * 2 ** (attempts - 1)))


# --- payloads ----------------------------------------------------------------------------------


def _key_fields(key: JobKey) -> Payload:
    return {"processor": key.processor, "version": key.version, "doc": key.doc, "input": key.input}


def claim_payload(key: JobKey, lease_until_ms: int) -> Payload:
    return {"t": T_CLAIM, **_key_fields(key), "lease_until_ms": lease_until_ms}


def result_payload(key: JobKey, output: Mapping[str, Any]) -> Payload:
    """A result: the key plus the processor's output fields (which must not shadow the key)."""
    clash = set(output) & {"t", "processor", "version", "doc", "input"}
    if clash:
        raise WrongTypeError(f"job.result: output may not set {sorted(clash)}")
    return {"t": T_RESULT, **_key_fields(key), **output}


def fail_payload(key: JobKey, reason: str, *, permanent: bool) -> Payload:
    return {"t": T_FAIL, **_key_fields(key), "reason": reason[:MAX_REASON], "permanent": permanent}


def caps_payload(caps: Iterable[str]) -> Payload:
    return {"t": T_CAPS, "caps": sorted(set(caps))}


def _name(payload: Payload, name: str) -> str:
    value = field_str(payload, name)
    if not value or len(value) > MAX_NAME:
        raise WrongTypeError(f"payload {payload['t']}: '{name}' must be 1-{MAX_NAME} characters")
    return value


def parse_key(payload: Payload) -> JobKey:
    """The job key of a ``job.*`` payload; a typed error if any part is missing or wrong."""
    return JobKey(
        _name(payload, "processor"),
        _name(payload, "version"),
        field_bytes(payload, "doc", DOC_BYTES),
        field_bytes(payload, "input", INPUT_BYTES),
    )


def parse_job_record(payload: Payload, author: bytes, lamport: int, time_ms: int) -> JobRecord:
    """A ``job.claim`` / ``job.result`` / ``job.fail`` payload as a record of the fold."""
    key = parse_key(payload)
    kind = payload["t"]
    if kind == T_CLAIM:
        return Claim(key, author, lamport, time_ms, field_int(payload, "lease_until_ms"))
    if kind == T_RESULT:
        return Result(key, author, lamport, time_ms)
    if kind == T_FAIL:
        permanent = payload.get("permanent", False)
        if type(permanent) is not bool:
            raise WrongTypeError("payload job.fail: 'permanent' must be a boolean")
        reason = field_str(payload, "reason")[:MAX_REASON]
        return Failure(key, author, lamport, time_ms, reason, permanent)
    raise WrongTypeError(f"payload {kind}: not a job record")


def parse_caps(payload: Payload, author: bytes, lamport: int) -> Caps:
    caps = payload.get("caps")
    if type(caps) is not list or len(caps) > MAX_CAPS:
        raise WrongTypeError(f"payload replica.caps: 'caps' must be a list of at most {MAX_CAPS}")
    if not all(type(c) is str and 0 < len(c) <= MAX_NAME for c in caps):
        raise WrongTypeError("payload replica.caps: each capability must be a short string")
    return Caps(author, lamport, frozenset(caps))


# --- the fold --------------------------------------------------------------------------------


def latest_caps(records: Iterable[Caps]) -> dict[bytes, frozenset[str]]:
    """What each replica offers now: its caps event with the highest lamport."""
    best: dict[bytes, Caps] = {}
    for caps in records:
        seen = best.get(caps.author)
        if seen is None or (caps.lamport, sorted(caps.caps)) > (seen.lamport, sorted(seen.caps)):
            best[caps.author] = caps
    return {author: caps.caps for author, caps in best.items()}


def _order(record: JobRecord) -> tuple[int, bytes, int, int]:
    # Same (lamport, author) only for equivocating authors; the type and time make it total.
    rank = 0 if isinstance(record, Result) else 1 if isinstance(record, Failure) else 2
    return (record.lamport, record.author, rank, record.time_ms)


@dataclass(frozen=True, slots=True)
class Walk:
    """What the claim rule concluded from one job's records (before looking at the clock)."""

    holder: Claim | None = None
    """The current claim (with its lease extended by renewals), if any."""
    holders: tuple[Claim, ...] = ()
    """Every claim that took the job, in order: the winners of successive lease windows."""
    result: Result | None = None
    failures: tuple[Failure, ...] = field(default_factory=tuple)


def walk(records: Iterable[JobRecord]) -> Walk:
    """Apply the claim rule to one job's records in ``(lamport, author)`` order."""
    holder: Claim | None = None
    holders: list[Claim] = []
    result: Result | None = None
    failures: list[Failure] = []
    for record in sorted(records, key=_order):
        if isinstance(record, Result):
            result = result or record  # sorted: the first is the lowest (lamport, author)
        elif isinstance(record, Failure):
            failures.append(record)
            if holder is not None and holder.author == record.author:
                holder = None  # a failed attempt releases its author's lease
        elif holder is None or record.time_ms > holder.lease_until_ms:
            holder = record
            holders.append(record)
        elif record.author == holder.author:
            holder = Claim(
                holder.key,
                holder.author,
                holder.lamport,
                holder.time_ms,
                max(holder.lease_until_ms, record.lease_until_ms),
            )
            holders[-1] = holder
        # else: a concurrent or later claim while the lease runs: void, its author stands down
    return Walk(holder, tuple(holders), result, tuple(failures))


def job_state(
    records: Iterable[JobRecord],
    *,
    need: str,
    offered: Iterable[str],
    now_ms: int,
    policy: Policy,
) -> JobState:
    """The state of one job at local time ``now_ms``, given every record of it we hold.

    ``offered`` is the union of every replica's latest capabilities.
    """
    w = walk(records)
    if w.result is not None:
        return Done(w.result.author, w.result.lamport, w.result.time_ms)
    attempts = len(w.failures)
    last = w.failures[-1] if w.failures else None
    reason = last.reason if last else ""
    if last is not None and (
        attempts >= policy.max_attempts or any(f.permanent for f in w.failures)
    ):
        final = next((f for f in w.failures if f.permanent), last)
        return Failed(final.reason, attempts, final.author)
    if w.holder is not None and now_ms <= w.holder.lease_until_ms:
        return Claimed(w.holder.author, w.holder.lease_until_ms, attempts)
    if need not in set(offered):
        return Waiting(need, attempts, reason)
    not_before = 0
    if last is not None:
        not_before = last.time_ms + policy.backoff_ms(attempts)
    if w.holder is not None:
        not_before = max(not_before, w.holder.lease_until_ms + policy.grace_ms)
    return Claimable(need, not_before, attempts, reason)


def may_claim(state: JobState, my_caps: frozenset[str], now_ms: int) -> bool:
    """Should this replica claim the job now? (It has the capability and no wait applies.)"""
    return isinstance(state, Claimable) and state.need in my_caps and now_ms >= state.not_before_ms


def holds(records: Iterable[JobRecord], me: bytes, now_ms: int) -> bool:
    """Is ``me`` the holder of a live lease and no result exists yet? (Go ahead and work.)"""
    w = walk(records)
    return (
        w.result is None
        and w.holder is not None
        and w.holder.author == me
        and now_ms <= w.holder.lease_until_ms
    )


def claim_order(me: bytes, keys: Iterable[JobKey]) -> list[JobKey]:
    """This replica's order of preference among claimable jobs.

    Each replica shuffles the queue differently (by a hash of its id and the key), so two
    capable replicas starting together mostly claim different jobs instead of racing for
    the same ones; the claim rule settles the races that remain.
    """

    def rank(key: JobKey) -> bytes:
        return hashlib.blake2b(
            me + key.doc + key.input + key.processor.encode(), digest_size=8
        ).digest()

    return sorted(keys, key=rank)
