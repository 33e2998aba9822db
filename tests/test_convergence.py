"""Convergence: three engines write concurrently and exchange raw event bytes in any order,
with duplicates and delays, and end with identical documents and version vectors."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import views
from replicas.home import Home
from replicas.vault import Replica, init_vault
from tests.conftest import add_replica, all_raw

# One operation: (replica index, op, argument). Docs are addressed by creation order.
ops = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(["create", "append", "insert", "delete", "title", "tag", "flush"]),
        st.integers(0, 10_000),
    ),
    min_size=1,
    max_size=40,
)


def apply_op(replica: Replica, known: list[bytes], op: str, n: int) -> None:
    engine = replica.engine
    if op == "create" or not known:
        known.append(engine.create_doc(f"doc {n}", f"start {n}\n"))
        return
    doc = known[n % len(known)]
    body = engine.open(doc).body
    if op == "append":
        engine.append_text(doc, f"line {n}\n")
    elif op == "insert":
        engine.edit_text(doc, n % (len(body) + 1), 0, f"<{n}>")
    elif op == "delete" and len(body):
        pos = n % len(body)
        engine.edit_text(doc, pos, min(3, len(body) - pos), "")
    elif op == "title":
        engine.set_title(doc, f"title {n}")
    elif op == "tag":
        engine.add_tag(doc, f"t{n % 5}")
    else:
        engine.flush()


def snapshot(replica: Replica) -> tuple[object, ...]:
    docs = views.list_docs(replica.store)
    return (
        sorted((d.doc, d.title, tuple(d.tags), str(replica.engine.open(d.doc).body)) for d in docs),
        {a: (h.seq, h.id) for a, h in replica.store.version_vector().items()},
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=ops, schedule=st.randoms(use_true_random=False), rounds=st.integers(1, 3))
def test_three_replicas_converge(tmp_path_factory, ops, schedule, rounds) -> None:
    root: Path = tmp_path_factory.mktemp("trio")
    a = init_vault(Home(root / "a"), "a")
    b = add_replica(a, root / "b", "b")
    c = add_replica(a, root / "c", "c")
    replicas = [a, b, c]
    known: list[list[bytes]] = [[], [], []]
    try:
        chunk = max(1, len(ops) // rounds)
        for start in range(0, len(ops), chunk):
            for who, op, n in ops[start : start + chunk]:
                apply_op(replicas[who], known[who], op, n)
            for replica in replicas:
                replica.engine.flush()
            # Exchange: every replica receives a random subset now (delay for the rest),
            # shuffled, with duplicates; raw bytes only.
            for target in replicas:
                incoming = [
                    raw for source in replicas if source is not target for raw in all_raw(source)
                ]
                schedule.shuffle(incoming)
                for raw in incoming[: schedule.randint(0, len(incoming))]:
                    target.engine.accept_remote(raw)
                    if schedule.random() < 0.2:
                        target.engine.accept_remote(raw)
            for i, replica in enumerate(replicas):
                known[i] = [d.doc for d in views.list_docs(replica.store)]
        # Heal: deliver everything, in reverse order, twice.
        for _ in range(2):
            for target in replicas:
                incoming = [raw for source in replicas for raw in all_raw(source)]
                for raw in reversed(incoming):
                    target.engine.accept_remote(raw)
        states = [snapshot(r) for r in replicas]
        assert states[0] == states[1] == states[2]
        for replica in replicas:
            assert replica.store.pending_count() == 0
    finally:
        for replica in replicas:
            replica.close()
