"""Sync with real processes on 127.0.0.1: a relay and replicas as ``shoal`` subprocesses.

Convergence through a relay and peer to peer on the LAN, crashes (SIGKILL of the relay and of
a replica mid-transfer), pairing and recovery from the relay alone, a blind relay, refusals of
non-members and malformed frames, and a large transfer in bounded memory.

Sizes scale with ``SHOAL_SLOW_SCALE`` (see ``conftest.py``); run the issue's full sizes with
``SHOAL_SLOW_SCALE=1 pytest tests/slow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest

from eventlog.accept import now_ms
from eventlog.crypto import SigningKey
from eventlog.envelope import Kind
from eventlog.integrity import walk
from eventlog.sealing import Keyring, Position, author_event
from eventlog.store import Store
from replicas.home import Home, write_secret
from replicas.vault import init_vault, opened
from tests.conftest import add_replica
from tests.slow.conftest import (
    SCALE,
    SHOAL,
    Proc,
    Procs,
    ThrottledProxy,
    count,
    error_line,
    free_port,
    get_json,
    get_text,
    heads,
    one_line_error,
    relay_db,
    scaled,
    shoal,
    shoal_json,
    wait_until,
)
from transport.messages import (
    MAX_BATCH_EVENTS,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Auth,
    CloseCode,
    Error,
    Events,
    Hello,
    decode,
    encode,
)

pytestmark = pytest.mark.slow

Throttle = Callable[[int, float], ThrottledProxy]
BYTES_PER_EVENT = 260
"""About what one small test event weighs on the wire (used to pace the throttled links)."""


# --- helpers ----------------------------------------------------------------------------------


def db(home: Path) -> Path:
    return home / "vault.db"


def run_all(commands: Iterable[list[str]], timeout: float = 60) -> None:
    """Start the commands at once (concurrent edits) and require each to succeed."""
    started = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    try:
        for proc in started:
            _, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def converged(*dbs: Path) -> dict[str, int] | None:
    """The common version vector (author -> seq) of these databases, once they agree."""
    first = heads(dbs[0])
    if first and all(heads(other) == first for other in dbs[1:]):
        return first
    return None


def bulk_pair(root: Path, events: int, pad: int = 8) -> tuple[Path, Path]:
    """Home A with ``events`` small sealed data events of its own, and home B: a member that
    holds only A's first few events. Made in-process, fast (one transaction per 5000)."""
    a = init_vault(Home(root / "a"), "a")
    try:
        add_replica(a, root / "b", "b").close()
        signer, keyring = a.engine.signer, a.engine.keyring
        for start in range(0, events, 5000):
            with a.store.atomic():
                for i in range(start, min(events, start + 5000)):
                    a.log.append_local(
                        signer,
                        keyring,
                        Kind.DATA,
                        1,
                        {"t": "test.note", "i": i, "p": os.urandom(pad)},
                    )
        a.engine.catch_up()
    finally:
        a.close()
    return root / "a", root / "b"


def vault_of(home: Path) -> str:
    return str(shoal_json(home, "status")["vault"])


def verify_clean(home: Path) -> None:
    result = json.loads(shoal(home, "verify", "--json").stdout)
    assert result["ok"] and result["problems"] == [], result


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def assert_blind(data: Path, planted: Iterable[str]) -> None:
    """No planted plaintext in any file of the relay's data directory (db, -wal, -shm, key)."""
    files = all_files(data)
    assert any(p.name.endswith(".db") for p in files), files
    for path in files:
        content = path.read_bytes()
        for text in planted:
            assert text.encode() not in content, f"{text!r} readable in {path}"


def same_body(homes: list[Path], doc: str, daemons: list[Proc]) -> str:
    """``shoal cat`` of ``doc`` on every home, required to be identical.

    On a difference, the failure says whether the logs disagree or only a home's derived
    state (snapshots) does: the document rebuilt from each log is compared too."""
    bodies = [shoal(home, "cat", doc).stdout for home in homes]
    if all(body == bodies[0] for body in bodies):
        return bodies[0]
    for daemon in daemons:
        daemon.stop()
    rebuilt = []
    for home in homes:
        copy = home.with_name(home.name + "-rebuilt")
        shutil.copytree(home, copy)
        with opened(Home(copy)) as replica:
            replica.engine.rebuild()
            rebuilt.append(str(replica.engine.open(bytes.fromhex(doc)).body))
    verdict = (
        "the logs agree; a home's derived state is stale (its snapshot misses an update)"
        if all(body == rebuilt[0] for body in rebuilt)
        else "the logs themselves disagree"
    )
    pytest.fail(f"`cat` differs between replicas: {verdict}\n" + "\n---\n".join(bodies))


def marker(what: str) -> str:
    return f"{what}-{secrets.token_hex(6)}"


# --- convergence --------------------------------------------------------------------------------


def test_three_replicas_converge_through_a_relay(procs: Procs, tmp_path: Path) -> None:
    relay = procs.relay(tmp_path / "relay")
    homes = [tmp_path / name for name in ("alpha", "beta", "gamma")]
    a = homes[0]
    shoal(a, "init", "--name", "alpha")
    title, first_line = marker("Shared-title"), marker("first-line")
    doc = shoal_json(a, "new", title, "--text", first_line + "\n")["doc"]
    for home in homes[1:]:
        code = shoal(a, "invite", "--relay", relay.url).stdout.split()[-1]
        shoal(home, "join", code, "--name", home.name)
        assert shoal(home, "cat", doc).stdout == first_line + "\n"
    daemons = [procs.serve(home, "--relay", relay.url) for home in homes]
    wait_until(
        lambda: all(get_json(d.url + "/health")["peers"][0]["connected"] for d in daemons),
        30,
        "every daemon connected to the relay",
    )
    rounds = scaled(20, 4)
    lines = []
    for r in range(rounds):
        batch = [f"{home.name} line {r} {marker('body')}" for home in homes]
        lines += batch
        run_all(
            [SHOAL, "--home", str(h), "append", doc, t + "\n"]
            for h, t in zip(homes, batch, strict=True)
        )
    own_docs = [
        shoal_json(h, "new", marker(f"{h.name}-own"), "--text", "mine\n")["doc"] for h in homes
    ]
    vv = wait_until(
        lambda: converged(*(db(h) for h in homes), relay_db(tmp_path / "relay", vault_of(a))),
        60,
        "three replicas and the relay to converge",
    )
    statuses = [shoal_json(h, "status") for h in homes]
    assert statuses[0]["version_vector"] == statuses[1]["version_vector"]
    assert statuses[1]["version_vector"] == statuses[2]["version_vector"]
    assert {k: v["seq"] for k, v in statuses[0]["version_vector"].items()} == vv
    listings = [{d["doc"]: d["title"] for d in shoal_json(h, "docs")} for h in homes]
    assert listings[0] == listings[1] == listings[2]
    assert set(listings[0]) == {doc, *own_docs}
    for home in homes:
        verify_clean(home)
    assert_blind(tmp_path / "relay", [title, first_line, *lines, *listings[0].values()])
    body = same_body(homes, doc, daemons)
    assert body.startswith(first_line + "\n")
    assert sorted(body.splitlines()[1:]) == sorted(lines)


def test_lan_peer_to_peer_without_a_relay(procs: Procs, tmp_path: Path) -> None:
    a, b = bulk_pair(tmp_path, 0)
    doc_a = shoal_json(a, "new", "From A", "--text", "a body\n")["doc"]
    doc_b = shoal_json(b, "new", "From B", "--text", "b body\n")["doc"]
    server_b = procs.serve(b)  # B listens on the LAN
    server_a = procs.serve(a, "--peer", server_b.url)  # A dials B; no relay anywhere
    wait_until(lambda: converged(db(a), db(b)), 30, "A and B to exchange their documents")
    lines = []
    for r in range(scaled(20, 4)):
        batch = [f"A {r} {marker('lan')}", f"B {r} {marker('lan')}"]
        lines += batch
        run_all(
            [SHOAL, "--home", str(h), "append", doc, t + "\n"]
            for h, doc, t in ((a, doc_a, batch[0]), (b, doc_a, batch[1]))
        )
    shoal(b, "append", doc_b, "more from b\n")
    vv = wait_until(lambda: converged(db(a), db(b)), 30, "live edits to converge peer to peer")
    assert len(vv) >= 2
    assert shoal_json(a, "status")["version_vector"] == shoal_json(b, "status")["version_vector"]
    assert shoal(a, "cat", doc_b).stdout == "b body\nmore from b\n"
    health = get_json(server_b.url + "/health")
    assert health["status"] == "ok" and health["database_ok"]
    assert [p["lag_events"] for p in health["peers"]] == [0]
    link = get_json(server_a.url + "/health")["peers"][0]
    assert link["connected"] and link["url"] == server_b.url and link["lag_events"] == 0
    assert "shoal_peers_connected 1.0" in get_text(server_b.url + "/metrics")
    body = same_body([a, b], doc_a, [server_a, server_b])
    assert sorted(body.splitlines()[1:]) == sorted(lines)


def test_concurrent_writers_on_one_home_while_it_serves(procs: Procs, tmp_path: Path) -> None:
    """Several `shoal append` at once on one home, while its daemon pushes to the relay and
    stores what another replica writes: every edit is in every replica's `cat`."""
    relay = procs.relay(tmp_path / "relay")
    a, b = tmp_path / "a", tmp_path / "b"
    shoal(a, "init", "--name", "a")
    doc = shoal_json(a, "new", "Busy", "--text", "start\n")["doc"]
    code = shoal(a, "invite", "--relay", relay.url).stdout.split()[-1]
    shoal(b, "join", code, "--name", "b")
    daemons = [procs.serve(a, "--relay", relay.url), procs.serve(b, "--relay", relay.url)]
    lines = []
    for r in range(scaled(15, 3)):
        batch = [f"a{r}.{i} {marker('w')}" for i in range(3)] + [f"b{r} {marker('w')}"]
        lines += batch
        run_all(
            [SHOAL, "--home", str(home), "append", doc, text + "\n"]
            for home, text in zip([a, a, a, b], batch, strict=True)
        )
    wait_until(lambda: converged(db(a), db(b)), 30, "both replicas to converge")
    body = same_body([a, b], doc, daemons)
    assert sorted(body.splitlines()[1:]) == sorted(lines)
    verify_clean(a)


def test_invite_through_my_own_lan_daemon(procs: Procs, tmp_path: Path) -> None:
    """On a LAN without a relay the peer to join through is the inviter's own daemon."""
    a, b = tmp_path / "a", tmp_path / "b"
    shoal(a, "init", "--name", "a")
    doc = shoal_json(a, "new", "LAN doc", "--text", "hello\n")["doc"]
    daemon = procs.serve(a)
    invite = shoal(a, "invite", "--peer", daemon.url, ok=False)
    assert invite.returncode == 0, invite.stderr
    shoal(b, "join", invite.stdout.split()[-1], "--name", "b")
    assert shoal(b, "cat", doc).stdout == "hello\n"


# --- crashes ------------------------------------------------------------------------------------


def test_relay_killed_mid_transfer_and_restarted(
    procs: Procs, throttle: Throttle, tmp_path: Path
) -> None:
    events = scaled(10_000, 3000)
    a, b = bulk_pair(tmp_path, events)
    vault, total = vault_of(a), count(db(a))
    data, port = tmp_path / "relay", free_port()
    relay = procs.relay(data, port)
    # A slow link, so that the kill lands mid-transfer on any machine (~4 s for it all).
    link = throttle(port, BYTES_PER_EVENT * events / 4)
    daemon = procs.serve(a, "--relay", link.url)
    on_relay = relay_db(data, vault)
    wait_until(lambda: count(on_relay) > 0, 30, "the first events to reach the relay")
    relay.kill9()
    held = count(on_relay)
    assert 0 < held < total, (held, total)
    restarted = procs.relay(data, port)
    wait_until(lambda: count(on_relay) == total, 60, "the upload to resume after the restart")
    assert daemon.alive()
    assert get_json(restarted.url + "/health")["status"] == "ok"
    assert heads(on_relay) == heads(db(a))
    before_b = count(db(b))
    assert shoal_json(b, "sync", restarted.url)["stored"] == total - before_b
    assert heads(db(b)) == heads(db(a))
    verify_clean(b)
    store = Store.open(on_relay)
    try:
        report = walk(store)
    finally:
        store.close()
    assert report.ok and report.events == total, report.problems[:3]


def test_replica_killed_mid_sync_then_resumes(
    procs: Procs, throttle: Throttle, tmp_path: Path
) -> None:
    events = scaled(10_000, 3000)
    a, b = bulk_pair(tmp_path, events)
    total = count(db(a))
    data, port = tmp_path / "relay", free_port()
    relay = procs.relay(data, port)
    shoal(a, "sync", relay.url)
    assert count(relay_db(data, vault_of(a))) == total
    link = throttle(port, BYTES_PER_EVENT * events / 5)
    start = count(db(b))
    # 1. kill -9 of a one-shot `shoal sync` while it receives.
    one_shot = procs.start("sync-b", "sync", link.url, home=b)
    wait_until(lambda: count(db(b)) > start, 30, "B to store its first batch")
    one_shot.kill9()
    after_first = count(db(b))
    assert start < after_first < total
    # 2. kill -9 of the `shoal serve` daemon while it receives.
    daemon = procs.serve(b, "--relay", link.url, listen=False)
    wait_until(lambda: count(db(b)) > after_first, 30, "the daemon to store more")
    daemon.kill9()
    after_second = count(db(b))
    assert after_first < after_second < total
    # 3. resume: everything arrives, nothing is broken or half-applied.
    shoal(b, "sync", relay.url)
    assert heads(db(b)) == heads(db(a))
    verify_clean(b)
    status = shoal_json(b, "status")
    assert status["events"] == total and status["pending"] == 0
    assert status["version_vector"] == shoal_json(a, "status")["version_vector"]
    indexed = shoal_json(b, "log", "--type", "test.note", "--limit", "1")
    assert indexed and indexed[0]["seq"] == max(heads(db(a)).values())


# --- pairing, recovery, and a blind relay -------------------------------------------------------


def test_join_by_invite_and_restore_from_the_relay_alone(procs: Procs, tmp_path: Path) -> None:
    relay = procs.relay(tmp_path / "relay")
    laptop, phone, fresh = tmp_path / "laptop", tmp_path / "phone", tmp_path / "fresh"
    shoal(laptop, "init", "--name", "laptop")
    key = shoal(laptop, "recovery-key").stdout.split()[-1]
    assert key.startswith("shoal-recovery-")
    assert "already shown" in one_line_error(shoal(laptop, "recovery-key", ok=False))
    taxes = shoal_json(laptop, "new", marker("Taxes"), "--text", marker("income") + "\n")["doc"]
    shoal(laptop, "append", taxes, marker("deductions") + "\n")
    shoal(laptop, "tag", taxes, "finance")
    code = shoal(laptop, "invite", "--relay", relay.url).stdout.split()[-1]
    assert shoal_json(phone, "join", code, "--name", "phone")["documents"] == 1
    # The invite is single-use.
    reused = shoal(tmp_path / "thief", "join", code, "--name", "thief", ok=False)
    assert "not a member" in error_line(reused)
    assert not (tmp_path / "thief" / "vault.db").exists()
    shoal_json(phone, "new", marker("Phone note"), "--text", marker("from the phone") + "\n")
    shoal(phone, "append", taxes, marker("phone line") + "\n")
    shoal(phone, "sync", relay.url)
    shoal(laptop, "sync", relay.url)
    expected = {d["doc"]: (d["title"], d["tags"]) for d in shoal_json(laptop, "docs")}
    bodies = {doc: shoal(laptop, "cat", doc).stdout for doc in expected}
    assert len(expected) == 2
    assert {doc: shoal(phone, "cat", doc).stdout for doc in expected} == bodies
    names = {d["name"] for d in shoal_json(laptop, "devices")}
    assert {"laptop", "phone"} <= names

    # Every device is lost.
    shutil.rmtree(laptop)
    shutil.rmtree(phone)
    restored = json.loads(
        shoal(
            fresh,
            "restore",
            relay.url,
            "--name",
            "fresh",
            "--json",
            env={"SHOAL_RECOVERY_KEY": key},
        ).stdout
    )
    assert restored["documents"] == 2
    assert {d["doc"]: (d["title"], d["tags"]) for d in shoal_json(fresh, "docs")} == expected
    assert {doc: shoal(fresh, "cat", doc).stdout for doc in expected} == bodies
    verify_clean(fresh)
    # The restored device is a full member: it writes, syncs and proves the backup.
    shoal(fresh, "append", taxes, "after the restore\n")
    shoal(fresh, "sync", relay.url)
    backup = shoal_json(fresh, "backup", relay.url)
    assert backup["ok"], backup
    assert "fresh" in {d["name"] for d in shoal_json(fresh, "devices")}
    planted = [title for title, _ in expected.values()] + [
        line for body in bodies.values() for line in body.splitlines()
    ]
    assert_blind(tmp_path / "relay", [*planted, "laptop", "phone", "fresh"])


def test_relay_data_holds_no_plaintext(procs: Procs, tmp_path: Path) -> None:
    data = tmp_path / "relay"
    relay = procs.relay(data)
    a, b = tmp_path / "a", tmp_path / "b"
    device_a, device_b = marker("DeviceNameA"), marker("DeviceNameB")
    shoal(a, "init", "--name", device_a)
    code = shoal(a, "invite", "--relay", relay.url).stdout.split()[-1]
    shoal(b, "join", code, "--name", device_b)
    planted = [device_a, device_b]
    for i in range(3):
        title, body, tag = marker(f"Title{i}"), marker(f"Body{i}"), marker(f"tag{i}")
        doc = shoal_json(a, "new", title, "--text", body * 50 + "\n")["doc"]
        shoal(a, "tag", doc, tag)
        renamed = marker(f"Renamed{i}")
        shoal(a, "set-title", doc, renamed)
        planted += [title, body, tag, renamed]
    note = marker("b-note")
    shoal(b, "new", note, "--text", marker("b-body") + "\n")
    planted.append(note)
    for home in (a, b, a):
        shoal(home, "sync", relay.url)
    assert converged(db(a), db(b), relay_db(data, vault_of(a)))
    # The positive control: the same search finds the plaintext in a (trusted) home.
    home_bytes = b"".join(p.read_bytes() for p in all_files(a) if p.name.startswith("vault.db"))
    for found in (device_a, planted[3], planted[5]):  # a device name, a body, a title
        assert found.encode() in home_bytes
    assert_blind(data, planted)  # while the relay runs: the WAL holds the recent writes
    assert any(p.name.endswith("-wal") for p in all_files(data))
    assert relay.stop() == 0
    assert_blind(data, planted)  # after a clean shutdown (checkpointed)


# --- refusals -----------------------------------------------------------------------------------


def non_member_copy(a: Path, x: Path) -> SigningKey:
    """x: a copy of home a under a key that is no member, holding an event of its own."""
    shutil.copytree(a, x)
    stranger = SigningKey.generate()
    (x / "identity" / "replica.key").unlink()
    write_secret(x / "identity" / "replica.key", stranger.private_bytes())
    store = Store.open(db(x))
    try:
        event = author_event(
            stranger,
            Keyring(Home(x).vault_keys()),
            store.vault_id,
            Position(1, bytes(32), store.max_lamport() + 1),
            now_ms(),
            Kind.DATA,
            1,
            {"t": "doc.note", "text": "let me in"},
        )
        with store.atomic():
            store.insert_event(event)
    finally:
        store.close()
    return stranger


def test_a_non_member_is_refused(procs: Procs, tmp_path: Path) -> None:
    data = tmp_path / "relay"
    relay = procs.relay(data)
    a, x = tmp_path / "a", tmp_path / "x"
    shoal(a, "init", "--name", "a")
    shoal(a, "new", "Members only", "--text", "hi\n")
    shoal(a, "sync", relay.url)
    stranger = non_member_copy(a, x)
    on_relay = relay_db(data, vault_of(a))
    before = heads(on_relay)

    line = error_line(shoal(x, "sync", relay.url, ok=False))
    assert "not a member" in line and "4403" in line
    assert heads(on_relay) == before
    server_a = procs.serve(a)
    line = error_line(shoal(x, "sync", server_a.url, ok=False))
    assert "not a member" in line
    stranger_hex = stranger.public.hex()
    assert stranger_hex not in heads(db(a)) and stranger_hex not in heads(on_relay)
    for path in (on_relay, db(a)):
        store = Store.open(path)
        try:
            assert store.pending_count() == 0
            assert store.query_one(
                "SELECT count(*) FROM events WHERE author = ?", (stranger.public,)
            ) == (0,)
        finally:
            store.close()
    # The relay and a's daemon keep serving members.
    shoal(a, "sync", relay.url)
    assert get_json(relay.url + "/health")["status"] == "ok"
    assert get_json(server_a.url + "/health")["status"] == "ok"


def test_refusals_are_one_line_on_stderr(procs: Procs, tmp_path: Path) -> None:
    relay = procs.relay(tmp_path / "relay")
    a = tmp_path / "a"
    shoal(a, "init", "--name", "a")
    shoal(a, "sync", relay.url)
    non_member_copy(a, tmp_path / "x")
    line = one_line_error(shoal(tmp_path / "x", "sync", relay.url, ok=False))
    assert "not a member" in line
    code = shoal(a, "invite", "--relay", relay.url).stdout.split()[-1]
    shoal(tmp_path / "b", "join", code, "--name", "b")
    line = one_line_error(shoal(tmp_path / "c", "join", code, "--name", "c", ok=False))
    assert "not a member" in line


def test_an_unreachable_url_is_one_clear_line(tmp_path: Path) -> None:
    a = tmp_path / "a"
    shoal(a, "init", "--name", "a")
    line = one_line_error(shoal(a, "sync", f"http://127.0.0.1:{free_port()}", ok=False))
    assert "cannot reach" in line


def test_a_failed_invite_changes_nothing(tmp_path: Path) -> None:
    a = tmp_path / "a"
    shoal(a, "init", "--name", "a")
    before = shoal_json(a, "status")["version_vector"]
    line = one_line_error(
        shoal(a, "invite", "--relay", f"http://127.0.0.1:{free_port()}", ok=False)
    )
    assert "cannot reach" in line
    assert shoal_json(a, "status")["version_vector"] == before
    assert [d["role"] for d in shoal_json(a, "devices")].count("invite") == 0


# --- malformed frames on the wire -----------------------------------------------------------------


async def _raw_exchange(
    url: str, send: Callable[[aiohttp.ClientWebSocketResponse], Any]
) -> tuple[int | None, list[Any]]:
    """Connect, read the relay's HELLO, send something, and read until the close."""
    received: list[Any] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        first = await asyncio.wait_for(ws.receive(), 10)
        assert first.type is aiohttp.WSMsgType.BINARY
        hello = decode(first.data)
        assert isinstance(hello, Hello)
        received.append(hello)
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await send(ws)
        while True:
            message = await asyncio.wait_for(ws.receive(), 10)
            if message.type is aiohttp.WSMsgType.CLOSE:
                return int(message.data), received  # the code in the peer's close frame
            if message.type is not aiohttp.WSMsgType.BINARY:
                return ws.close_code, received
            received.append(decode(message.data))


def _bytes_sender(*frames: bytes) -> Callable[[aiohttp.ClientWebSocketResponse], Any]:
    async def send(ws: aiohttp.ClientWebSocketResponse) -> None:
        for frame in frames:
            await ws.send_bytes(frame)

    return send


def test_malformed_frames_close_the_connection(procs: Procs, tmp_path: Path) -> None:
    relay = procs.relay(tmp_path / "relay")
    a, b = bulk_pair(tmp_path, 10)
    vault = vault_of(a)
    member = shoal_json(a, "status")["replica"]
    shoal(a, "sync", relay.url)
    daemon = procs.serve(a, "--relay", relay.url)  # another client, connected throughout
    wait_until(lambda: get_json(daemon.url + "/health")["peers"][0]["connected"], 30, "A's daemon")
    url = f"ws://127.0.0.1:{relay.url.rsplit(':', 1)[1]}/v1/vaults/{vault}/sync"
    hello = encode(
        Hello(PROTOCOL_VERSION, bytes.fromhex(vault), bytes.fromhex(member), "full", bytes(32))
    )

    async def text(ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_str("hello")

    cases: list[tuple[str, Callable[[aiohttp.ClientWebSocketResponse], Any], int]] = [
        ("not msgpack", _bytes_sender(b"\xc1\xc1"), CloseCode.MALFORMED),
        ("text frame", text, CloseCode.MALFORMED),
        ("unknown type", _bytes_sender(msgpack.packb([99])), CloseCode.MALFORMED),
        ("truncated", _bytes_sender(hello[:-3]), CloseCode.MALFORMED),
        ("trailing bytes", _bytes_sender(hello + b"\x00"), CloseCode.MALFORMED),
        ("non-canonical", _bytes_sender(b"\x92\x05\xcc\x01"), CloseCode.MALFORMED),
        ("wrong arity", _bytes_sender(msgpack.packb([5, 1, 2])), CloseCode.MALFORMED),
        ("events before auth", _bytes_sender(encode(Events(1, (b"x",)))), CloseCode.MALFORMED),
        (
            "wrong vault",
            _bytes_sender(encode(Hello(PROTOCOL_VERSION, bytes(32), bytes(32), "full", bytes(32)))),
            CloseCode.UNKNOWN_VAULT,
        ),
        ("bad auth", _bytes_sender(hello, encode(Auth(bytes(64)))), CloseCode.AUTH_FAILED),
        (
            "too many events",
            _bytes_sender(msgpack.packb([4, 1, [b""] * (MAX_BATCH_EVENTS + 1)])),
            CloseCode.FRAME_TOO_LARGE,
        ),
    ]
    for name, send, code in cases:
        close, received = asyncio.run(_raw_exchange(url, send))
        assert close == code, (name, close, received)
        assert isinstance(received[-1], Error) and received[-1].code == code, (name, received)
    # A frame beyond the size limit is cut off by the WebSocket layer: 1009 (message too big),
    # or 1006 when the relay's close resets the socket before the client reads the close frame.
    close, _ = asyncio.run(_raw_exchange(url, _bytes_sender(b"\x00" * (MAX_FRAME_BYTES + 1))))
    assert close in (1006, 1009, CloseCode.FRAME_TOO_LARGE)

    # The relay kept serving: the daemon's link never dropped, and new clients sync.
    link = get_json(daemon.url + "/health")["peers"][0]
    assert link["connected"] and link["last_error"] == "", link
    shoal(b, "sync", relay.url)
    assert heads(db(b)) == heads(db(a))
    doc = shoal_json(a, "new", "After the noise", "--text", "still fine\n")["doc"]
    wait_until(lambda: converged(db(a), relay_db(tmp_path / "relay", vault)), 30, "a live push")
    shoal(b, "sync", relay.url)
    assert shoal(b, "cat", doc).stdout == "still fine\n"
    health = get_json(relay.url + "/health")
    assert health["status"] == "ok" and health["vaults"] == 1


def test_unauthenticated_connections_store_nothing(procs: Procs, tmp_path: Path) -> None:
    data = tmp_path / "relay"
    relay = procs.relay(data)
    port = relay.url.rsplit(":", 1)[1]
    for _ in range(5):
        url = f"ws://127.0.0.1:{port}/v1/vaults/{secrets.token_hex(32)}/sync"
        close, _ = asyncio.run(_raw_exchange(url, _bytes_sender(b"\xc1")))
        assert close == CloseCode.MALFORMED
    assert get_json(relay.url + "/health")["vaults"] == 0
    assert list((data / "vaults").glob("*.db")) == []


# --- volume -------------------------------------------------------------------------------------


def _run_measured(args: list[str], out: Path, timeout: float) -> tuple[int, int]:
    """Run a command; its exit code and its own peak RSS in bytes.

    ``os.wait4`` gives the rusage of exactly this child; ``getrusage(RUSAGE_CHILDREN)`` would
    report the largest of all children this pytest process ever reaped."""
    with out.open("wb") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, usage.ru_maxrss * 1024
            if time.monotonic() > deadline:
                pytest.fail(f"{args} did not finish in {timeout} s")
            time.sleep(0.05)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()


def test_large_transfer_in_bounded_memory(procs: Procs, tmp_path: Path) -> None:
    events = scaled(100_000, 20_000)
    a, b = bulk_pair(tmp_path, events)
    total = count(db(a))
    server = procs.serve(a)
    started = time.monotonic()
    code, peak = _run_measured(
        [SHOAL, "--home", str(b), "sync", server.url, "--json"], tmp_path / "b-sync.out", 300
    )
    elapsed = time.monotonic() - started
    output = (tmp_path / "b-sync.out").read_text()
    assert code == 0, output
    result = json.loads(output)
    assert result["stored"] >= events
    assert heads(db(b)) == heads(db(a))
    assert count(db(b)) == total
    assert peak < 300 * 1024 * 1024, f"B peaked at {peak / 2**20:.0f} MB"
    print(
        f"\n{events} events A -> fresh B in {elapsed:.1f} s "
        f"({events / elapsed:,.0f} events/s), B peak RSS {peak / 2**20:.0f} MB, scale {SCALE}"
    )
