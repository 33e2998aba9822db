"""A live ``shoal relay`` fed mutated frames over real WebSockets (issue 6).

Each connection authenticates as a member (or not), sends one to three frames mutated from a
real session (HELLO, AUTH, HAVE, EVENTS of the vault's real events), then a byte msgpack
never uses. Every connection must end with a close code within a bounded time, the relay's
memory must stay bounded, and it must keep serving a well-behaved client afterwards with its
stored log intact. Connections: ``scaled(2000, 150)``; seed ``SHOAL_FUZZ_SEED``.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aiohttp
import pytest

from eventlog.crypto import SigningKey
from eventlog.integrity import walk
from eventlog.store import Store
from replicas.home import Home
from tests.slow.conftest import Procs, get_json, heads, relay_db, scaled, shoal, shoal_json
from tests.slow.test_sync_processes import bulk_pair
from tests.test_decoder_fuzz import SEED, mutate
from transport.messages import (
    PROTOCOL_VERSION,
    Auth,
    CloseCode,
    Events,
    Have,
    Hello,
    decode,
    encode,
)
from transport.session import auth_transcript

pytestmark = pytest.mark.slow

CONNECTIONS = scaled(2000, 150)
CLOSE_WITHIN_S = 20.0
"""Bounded: the relay's own handshake timeout is 15 s; nothing may take longer than that."""
KNOWN_CODES = {int(c) for c in CloseCode} | {1006, 1009}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def one_connection(
    url: str, vault: bytes, member: SigningKey, raws: list[bytes], rng: random.Random
) -> int:
    """Optionally authenticate, send mutated frames, then garbage; the close code."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        first = await ws.receive()
        hello = decode(first.data)
        assert isinstance(hello, Hello)
        challenge = bytes(32)
        mine = encode(Hello(PROTOCOL_VERSION, vault, member.public, "full", challenge))
        auth = encode(
            Auth(member.sign(auth_transcript(vault, hello.challenge, member.public, hello.replica)))
        )
        seeds = [
            mine,
            auth,
            encode(Have(((member.public, 1, bytes(32)),))),
            encode(Events(1, tuple(raws[: rng.randint(1, len(raws))]))),
        ]
        try:
            if rng.random() < 0.6:  # get past the handshake, so mutations reach EVENTS/HAVE
                await ws.send_bytes(mine)
                await ws.send_bytes(auth)
            for _ in range(rng.randint(1, 3)):
                await ws.send_bytes(mutate(rng.choice(seeds), rng, seeds))
            await ws.send_bytes(b"\xc1")
        except (ConnectionError, aiohttp.ClientError):
            pass
        while True:
            message = await ws.receive()
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return int(message.data) if message.type is aiohttp.WSMsgType.CLOSE else 1006
            if message.type is aiohttp.WSMsgType.ERROR:
                return 1006


async def storm(url: str, vault: bytes, member: SigningKey, raws: list[bytes]) -> dict[int, int]:
    codes: dict[int, int] = {}
    for index in range(CONNECTIONS):
        rng = random.Random(SEED * 7_777 + index)
        code = await asyncio.wait_for(one_connection(url, vault, member, raws, rng), CLOSE_WITHIN_S)
        codes[code] = codes.get(code, 0) + 1
    return codes


def test_mutated_frames_against_a_live_relay(procs: Procs, tmp_path: Path) -> None:
    a, b = bulk_pair(tmp_path, 50)
    data = tmp_path / "relay"
    relay = procs.relay(data)
    shoal(a, "sync", relay.url)
    vault = bytes.fromhex(shoal_json(a, "status")["vault"])
    member = Home(a).signer()
    store = Store.open(a / "vault.db")
    try:
        raws = [row.raw for row in store.events_after(0, 60)]
    finally:
        store.close()
    before = heads(relay_db(data, vault.hex()))
    url = relay.url.replace("http://", "ws://") + f"/v1/vaults/{vault.hex()}/sync"
    rss_before = rss_kb(relay.popen.pid)
    started = time.monotonic()
    codes = asyncio.run(storm(url, vault, member, raws))
    elapsed = time.monotonic() - started
    rss_after = rss_kb(relay.popen.pid)
    assert relay.alive()
    assert set(codes) <= KNOWN_CODES, codes
    assert sum(codes.values()) == CONNECTIONS
    assert rss_after - rss_before < 100 * 1024, (rss_before, rss_after)  # bounded memory
    # Still serving: a member syncs, the log is what it was plus nothing foreign.
    assert get_json(relay.url + "/health")["status"] == "ok"
    shoal(b, "sync", relay.url)
    assert heads(b / "vault.db") == heads(a / "vault.db") == before
    assert relay.stop() == 0
    relay_store = Store.open(relay_db(data, vault.hex()))
    try:
        report = walk(relay_store)
        assert report.ok, report.problems[:3]
    finally:
        relay_store.close()
    print(
        f"\nrelay fuzz: {CONNECTIONS} connections of mutated frames in {elapsed:.0f} s, "
        f"close codes {dict(sorted(codes.items()))}, relay RSS {rss_before // 1024} -> "
        f"{rss_after // 1024} MB"
    )
