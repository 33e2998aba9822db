"""The job protocol as pure logic: the claim rule, leases, retries, and order independence."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog.errors import DecodeError
from processors import jobs
from processors.jobs import (
    Claim,
    Claimable,
    Claimed,
    Done,
    Failed,
    Failure,
    JobKey,
    Policy,
    Result,
    Waiting,
)

KEY = JobKey("extract", "1", bytes(16), bytes(32))
A, B, C = b"a" * 32, b"b" * 32, b"c" * 32
POLICY = Policy(lease_ms=1000, grace_ms=100, max_attempts=3, backoff_base_ms=500)


def state(
    records: Iterable[jobs.JobRecord], now: int = 0, offered: tuple[str, ...] = ("ocr",)
) -> jobs.JobState:
    need = "ocr"
    return jobs.job_state(records, need=need, offered=offered, now_ms=now, policy=POLICY)


def test_no_capability_anywhere_means_waiting() -> None:
    assert state([], offered=("extract",)) == Waiting("ocr")
    assert state([], offered=("ocr",)) == Claimable("ocr")


def test_lowest_lamport_then_author_wins_concurrent_claims() -> None:
    claims = [Claim(KEY, B, 5, 100, 1100), Claim(KEY, A, 5, 120, 1120), Claim(KEY, C, 4, 90, 1090)]
    assert state(claims, now=200) == Claimed(C, 1090)
    assert state(claims[:2], now=200) == Claimed(A, 1120)


def test_loser_claim_never_takes_over_when_the_winner_expires() -> None:
    # B lost to A; A died. B's old claim must not make B the holder later: B stood down.
    claims = [Claim(KEY, A, 5, 100, 1100), Claim(KEY, B, 5, 100, 1200)]
    assert state(claims, now=1150) == Claimable("ocr", not_before_ms=1200)
    assert state(claims, now=1300) == Claimable("ocr", not_before_ms=1200)


def test_expired_lease_can_be_claimed_again_by_the_claimants_clock() -> None:
    first = Claim(KEY, A, 5, 100, 1100)
    early = Claim(KEY, B, 9, 1050, 2050)  # B claimed while A's lease still ran: void
    late = Claim(KEY, C, 12, 1300, 2300)
    assert state([first, early], now=1200) == Claimable("ocr", not_before_ms=1200)
    assert state([first, early, late], now=1400) == Claimed(C, 2300)


def test_renewal_by_the_holder_extends_the_lease() -> None:
    records = [
        Claim(KEY, A, 5, 100, 1100),
        Claim(KEY, B, 6, 105, 1105),
        Claim(KEY, A, 9, 700, 1700),
    ]
    assert state(records, now=1500) == Claimed(A, 1700)
    assert jobs.holds(records, A, 1500)
    assert not jobs.holds(records, B, 1500)


def test_result_anywhere_means_done_and_the_first_result_counts() -> None:
    records: list[jobs.JobRecord] = [
        Claim(KEY, A, 5, 100, 1100),
        Result(KEY, B, 8, 300),
        Result(KEY, A, 7, 400),
    ]
    assert state(records, now=5000) == Done(A, 7, 400)
    assert not jobs.holds(records, A, 200)


def test_failures_back_off_exponentially_then_fail_for_good() -> None:
    r: list[jobs.JobRecord] = [
        Claim(KEY, A, 1, 0, 1000),
        Failure(KEY, A, 2, 10, "ollama down", permanent=False),
    ]
    s = state(r, now=20)
    assert s == Claimable("ocr", not_before_ms=10 + 500, attempts=1, last_reason="ollama down")
    assert not jobs.may_claim(s, frozenset({"ocr"}), 20)
    assert jobs.may_claim(s, frozenset({"ocr"}), 510)
    assert not jobs.may_claim(s, frozenset({"extract"}), 510)
    r += [Claim(KEY, B, 3, 600, 1600), Failure(KEY, B, 4, 700, "again", permanent=False)]
    assert state(r, now=800) == Claimable("ocr", 700 + 1000, 2, "again")
    r += [Claim(KEY, A, 5, 2000, 3000), Failure(KEY, A, 6, 2100, "third", permanent=False)]
    assert state(r, now=2200) == Failed("third", 3, A)


def test_permanent_failure_ends_the_job_at_once() -> None:
    r: list[jobs.JobRecord] = [
        Claim(KEY, A, 1, 0, 1000),
        Failure(KEY, A, 2, 10, "corrupt PDF", permanent=True),
    ]
    assert state(r, now=20) == Failed("corrupt PDF", 1, A)


def test_latest_caps_per_author() -> None:
    caps = [
        jobs.Caps(A, 3, frozenset({"ocr"})),
        jobs.Caps(A, 7, frozenset({"llm:m"})),
        jobs.Caps(B, 1, frozenset()),
    ]
    assert jobs.latest_caps(reversed(caps)) == {A: frozenset({"llm:m"}), B: frozenset()}


def test_payloads_round_trip_and_bad_ones_are_typed_errors() -> None:
    claim = jobs.parse_job_record(jobs.claim_payload(KEY, 99), A, 4, 5)
    assert claim == Claim(KEY, A, 4, 5, 99)
    fail = jobs.parse_job_record(jobs.fail_payload(KEY, "x" * 900, permanent=True), A, 4, 5)
    assert isinstance(fail, Failure) and fail.permanent and len(fail.reason) == jobs.MAX_REASON
    result = jobs.result_payload(KEY, {"text": "hi"})
    assert jobs.parse_job_record(result, B, 1, 2) == Result(KEY, B, 1, 2)
    with pytest.raises(DecodeError):
        jobs.result_payload(KEY, {"doc": b"x"})
    for broken in (
        {**jobs.claim_payload(KEY, 1), "doc": b"short"},
        {**jobs.claim_payload(KEY, 1), "lease_until_ms": "soon"},
        {**jobs.claim_payload(KEY, 1), "processor": ""},
        {"t": "job.claim"},
        {**jobs.fail_payload(KEY, "r", permanent=False), "permanent": 1},
    ):
        with pytest.raises(DecodeError):
            jobs.parse_job_record(broken, A, 1, 1)
    with pytest.raises(DecodeError):
        jobs.parse_caps({"t": "replica.caps", "caps": [1]}, A, 1)
    assert jobs.parse_caps(jobs.caps_payload(["ocr", "ocr"]), A, 1).caps == {"ocr"}


# --- properties ------------------------------------------------------------------------------

AUTHORS = st.sampled_from([A, B, C])


@st.composite
def job_records(draw: st.DrawFn) -> list[jobs.JobRecord]:
    """Records as replicas would write them: lamport grows with time, per author seq."""
    records: list[jobs.JobRecord] = []
    lamport, time_ms = 0, 0
    for _ in range(draw(st.integers(0, 14))):
        lamport += draw(st.integers(0, 2))  # 0: concurrent with the previous record
        time_ms += draw(st.integers(0, 700))
        author = draw(AUTHORS)
        if any(r.lamport == lamport and r.author == author for r in records):
            lamport += 1  # lamport grows along each author's log: (lamport, author) is unique
        kind = draw(st.sampled_from(["claim", "claim", "claim", "fail", "result"]))
        if kind == "claim":
            lease = draw(st.integers(1, 1500))
            records.append(Claim(KEY, author, lamport, time_ms, time_ms + lease))
        elif kind == "fail":
            records.append(Failure(KEY, author, lamport, time_ms, "r", draw(st.booleans())))
        else:
            records.append(Result(KEY, author, lamport, time_ms))
    return records


@settings(max_examples=300, deadline=None)
@given(job_records(), st.randoms(use_true_random=False), st.integers(0, 12_000))
def test_any_delivery_order_gives_the_same_fold(records, rnd: random.Random, now: int) -> None:
    shuffled = list(records)
    rnd.shuffle(shuffled)
    assert jobs.walk(shuffled) == jobs.walk(records)
    assert state(shuffled, now=now) == state(records, now=now)
    for me in (A, B, C):
        assert jobs.holds(shuffled, me, now) == jobs.holds(records, me, now)


@settings(max_examples=300, deadline=None)
@given(job_records(), st.integers(0, 12_000))
def test_at_most_one_holder_per_lease_window(records, now: int) -> None:
    w = jobs.walk(records)
    for before, after in zip(w.holders, w.holders[1:], strict=False):
        # A new holder takes over only once the previous lease is over (by its own clock)
        # or its holder gave it up with a failure: the windows never overlap.
        released = any(
            isinstance(f, Failure)
            and f.author == before.author
            and (before.lamport, before.author) <= (f.lamport, f.author)
            and (f.lamport, f.author) <= (after.lamport, after.author)
            for f in records
        )
        assert after.time_ms > before.lease_until_ms or released
    holding = [me for me in (A, B, C) if jobs.holds(records, me, now)]
    assert len(holding) <= 1
    claims = [r for r in records if isinstance(r, Claim)]
    if claims and w.holders:
        first = min(claims, key=lambda c: (c.lamport, c.author, c.time_ms))
        assert w.holders[0] == first or w.holders[0].author == first.author
