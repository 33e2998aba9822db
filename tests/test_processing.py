"""Processors on real replicas in one process: racing claims, lease takeover, rebuild.

Replicas exchange events by handing each other their stored bytes (what sync does). The
``textstats`` processor is real code that needs no tool, so these tests exercise the job
protocol end to end in well under a second each.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import msgpack

from eventlog.envelope import decode_event
from processors import jobs
from processors.catalog import TextStatsProcessor
from processors.derived import Derived
from processors.runner import Runner, Settings
from replicas.vault import Replica
from tests.conftest import all_raw

POLICY = jobs.Policy(lease_ms=60_000, grace_ms=1_000, max_attempts=2, backoff_base_ms=10_000)


def exchange(*replicas: Replica) -> None:
    """Every replica gets every event any of them holds (a full sync round)."""
    for source in replicas:
        source.engine.flush()
    raws = [raw for source in replicas for raw in all_raw(source)]
    for target in replicas:
        for raw in raws:
            target.engine.accept_remote(raw)


def runner(replica: Replica, caps: set[str], clock=None, **settings) -> Runner:
    derived = Derived(replica.engine, replica.home.root / "index")
    kwargs = {"clock": clock} if clock else {}
    return Runner(
        replica.engine,
        derived,
        [TextStatsProcessor()],
        Settings(
            **{"caps": frozenset(caps), "policy": POLICY, "settle_s": 0, "batch": 100, **settings}
        ),
        **kwargs,
    )


def results_by_key(replica: Replica) -> Counter[jobs.JobKey]:
    found: Counter[jobs.JobKey] = Counter()
    for record in replica.engine.records_after(0, 10**6):
        if record.payload is not None and record.payload.get("t") == jobs.T_RESULT:
            found[jobs.parse_key(record.payload)] += 1
    return found


def notes(replica: Replica, count: int) -> list[bytes]:
    made = [replica.engine.create_doc(f"note {i}", f"word {i} " * (i + 1)) for i in range(count)]
    replica.engine.flush()
    return made


def test_two_capable_replicas_racing_do_each_job_once(trio: list[Replica]) -> None:
    laptop, server1, server2 = trio
    docs = notes(laptop, 6)
    exchange(*trio)
    r1, r2 = runner(server1, {"textstats"}), runner(server2, {"textstats"})
    r1.advertise()
    r2.advertise()
    exchange(*trio)
    # Both claim everything before seeing each other's claims: every job is contested.
    now = r1.clock()
    c1 = r1.claim(r1.claimable(r1.jobs(now), now))
    c2 = r2.claim(r2.claimable(r2.jobs(now), now))
    assert sorted(c1) == sorted(c2) and len(c1) == len(docs)
    exchange(*trio)
    r1.derived.fold()
    r2.derived.fold()
    held1, held2 = r1.held(r1.jobs()), r2.held(r2.jobs())
    assert not {j.key for j in held1} & {j.key for j in held2}  # one winner per job
    assert len(held1) + len(held2) == len(docs)
    outcomes = r1.run_held_sync(held1) + r2.run_held_sync(held2)
    assert [o.status for o in outcomes] == ["done"] * len(docs)
    exchange(*trio)
    for replica in trio:
        counts = results_by_key(replica)
        assert len(counts) == len(docs) and set(counts.values()) == {1}
        derived = Derived(replica.engine)
        derived.fold()
        for doc in docs:
            result = derived.latest_result(doc, "textstats")
            assert result is not None
            assert result.output["words"] == 2 * (docs.index(doc) + 1) + 2  # title + body
    # Nothing left for anyone: a result anywhere is never recomputed.
    assert r1.claimable(r1.jobs(), r1.clock()) == []
    r2.derived.fold()
    assert all(isinstance(j.state, jobs.Done) for j in r2.jobs())


def test_the_laptop_without_capabilities_sees_waiting_then_done(trio: list[Replica]) -> None:
    laptop, server, _ = trio
    notes(laptop, 2)
    lap = runner(laptop, set())
    assert lap.advertise() is False  # nothing to offer: no caps event at all
    states = {type(j.state) for j in lap.jobs()}
    assert states == {jobs.Waiting}
    exchange(laptop, server)
    srv = runner(server, {"textstats"})
    outcomes = asyncio.run(srv.drain())
    assert [o.status for o in outcomes] == ["done", "done"]
    exchange(laptop, server)
    lap.derived.fold()
    assert {type(j.state) for j in lap.jobs()} == {jobs.Done}


def test_a_runner_does_its_jobs_when_another_process_advertised_none(
    trio: list[Replica],
) -> None:
    laptop, server, _ = trio
    notes(laptop, 2)
    exchange(laptop, server)
    worker = runner(server, {"textstats"}, batch=1)
    first = asyncio.run(worker.step())
    assert [o.status for o in first] == ["done"]
    idle = runner(server, set())  # `shoal serve` offering nothing, on the same home
    assert idle.advertise() is True  # it retracts what the worker advertised
    ready, _ = worker.pending_for_me(worker.clock())
    assert ready == 1  # the worker still knows what it can do itself
    rest = asyncio.run(worker.drain())
    assert [o.status for o in rest] == ["done"]


def test_an_expired_lease_is_taken_over(trio: list[Replica]) -> None:
    laptop, server1, server2 = trio
    [doc] = notes(laptop, 1)
    exchange(*trio)
    t = [1_000_000]
    r1 = runner(server1, {"textstats"}, clock=lambda: t[0])
    r2 = runner(server2, {"textstats"}, clock=lambda: t[0])
    r1.advertise()
    r2.advertise()
    exchange(*trio)
    r1.claim(r1.claimable(r1.jobs(), t[0]))  # ... and then server1 dies without a result
    exchange(*trio)
    r2.derived.fold()
    [job] = r2.jobs()
    assert isinstance(job.state, jobs.Claimed) and job.state.by == server1.engine.me
    assert r2.claimable(r2.jobs(), t[0]) == []
    t[0] += POLICY.lease_ms + 1  # lease over, but within the skew grace: still hands off
    assert r2.claimable(r2.jobs(), t[0]) == []
    t[0] += POLICY.grace_ms
    taken = r2.claim(r2.claimable(r2.jobs(), t[0]))
    assert taken == [job.key]
    assert [o.status for o in r2.run_held_sync(r2.held(r2.jobs()))] == ["done"]
    exchange(*trio)
    assert results_by_key(laptop) == Counter({job.key: 1})
    assert job.key.doc == doc


def test_edit_makes_a_new_job_and_the_old_result_stays_as_history(trio: list[Replica]) -> None:
    laptop, server, _ = trio
    [doc] = notes(laptop, 1)
    exchange(laptop, server)
    srv = runner(server, {"textstats"})
    asyncio.run(srv.drain())
    laptop.engine.append_text(doc, " more words here")
    exchange(laptop, server)
    [job] = srv.jobs()
    assert isinstance(job.state, jobs.Claimable)
    asyncio.run(srv.drain())
    result = srv.derived.latest_result(doc, "textstats")
    assert result is not None and result.key == job.key and result.output["words"] == 7
    assert len(results_by_key(server)) == 2


def test_rebuild_from_the_log_equals_the_live_state(trio: list[Replica]) -> None:
    laptop, server, _ = trio
    notes(laptop, 3)
    exchange(laptop, server)
    srv = runner(server, {"textstats"})
    asyncio.run(srv.drain())
    exchange(laptop, server)

    def dump(replica: Replica) -> dict[str, list[tuple[object, ...]]]:
        tables = ("proc_caps", "proc_records", "proc_results", "proc_meta")
        return {t: sorted(replica.store.query_all(f"SELECT * FROM {t}")) for t in tables}

    live = Derived(laptop.engine)
    live.fold()
    before = dump(laptop)
    assert before["proc_results"]
    assert live.rebuild() > 0
    assert dump(laptop) == before


def test_an_engine_rebuild_elsewhere_makes_the_next_fold_start_over(trio: list[Replica]) -> None:
    laptop, server, _ = trio
    notes(laptop, 2)
    exchange(laptop, server)
    asyncio.run(runner(server, {"textstats"}).drain())
    exchange(laptop, server)
    Derived(laptop.engine).fold()
    good = sorted(laptop.store.query_all("SELECT * FROM proc_results"))
    assert good
    with laptop.store.atomic():  # a row no record in the log supports
        laptop.store.conn.execute("DELETE FROM proc_results")
    laptop.engine.rebuild()  # what a removal that revokes events does, in any process
    Derived(laptop.engine).fold()  # the next process to open the processors' state
    assert sorted(laptop.store.query_all("SELECT * FROM proc_results")) == good


def test_malformed_job_records_are_skipped_not_fatal(trio: list[Replica]) -> None:
    laptop, server, _ = trio
    laptop.engine.append_record({"t": "job.claim", "processor": "x", "doc": b"short"})
    laptop.engine.append_record({"t": "replica.caps", "caps": "everything"})
    [doc] = notes(laptop, 1)
    exchange(laptop, server)
    srv = runner(server, {"textstats"})
    assert [o.status for o in asyncio.run(srv.drain())] == ["done"]
    raw = [r for r in all_raw(server) if decode_event(r).author == server.engine.me][-1]
    payload = server.engine.keyring.open_payload(decode_event(raw))
    assert payload["t"] == jobs.T_RESULT and payload["doc"] == doc
    assert msgpack.packb(payload)  # a plain msgpack map, as every payload
