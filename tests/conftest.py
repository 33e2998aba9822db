"""Shared fixtures: real homes with real SQLite files in pytest's tmp_path."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventlog.crypto import KxKey, SigningKey
from replicas.home import Home
from replicas.vault import Replica, init_vault, join_vault
from tests.fake_ollama import FakeOllama


def all_raw(replica: Replica) -> list[bytes]:
    """Every stored event of a replica, as the bytes that would travel."""
    return [row.raw for row in replica.store.events_after(0, 10**9)]


def add_replica(founder: Replica, root: Path, name: str) -> Replica:
    """A second member, set up the way pairing will: added by the founder, keys unwrapped."""
    signer, kx = SigningKey.generate(), KxKey.generate()
    founder.engine.add_member(signer.public, kx.public)
    joined = join_vault(Home(root), founder.log.vault_id, signer, kx, name)
    for raw in all_raw(founder):
        joined.engine.accept_remote(raw)
    joined.home.save_vault_keys(joined.engine.adopt_keys(kx))
    return joined


@pytest.fixture
def make_replica(tmp_path: Path) -> Iterator[Callable[[str], Replica]]:
    opened: list[Replica] = []

    def make(name: str = "laptop") -> Replica:
        replica = init_vault(Home(tmp_path / name), name)
        opened.append(replica)
        return replica

    yield make
    for replica in opened:
        with contextlib.suppress(Exception):
            replica.close()


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[Replica]]:
    """Three members of one vault: a founder and two added replicas."""
    a = init_vault(Home(tmp_path / "a"), "a")
    b = add_replica(a, tmp_path / "b", "b")
    c = add_replica(a, tmp_path / "c", "c")
    replicas = [a, b, c]
    yield replicas
    for replica in replicas:
        with contextlib.suppress(Exception):
            replica.close()


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    """An Ollama API server on 127.0.0.1 (``.url``; ``.calls(path)`` lists what it was asked)."""
    with FakeOllama() as server:
        yield server
