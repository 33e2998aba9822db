"""Creating and opening a vault in a home: the wiring of identity, store, log and engine."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from engine.engine import Engine
from eventlog.accept import Log, now_ms
from eventlog.crypto import KxKey, SigningKey, random_key, wrap_key
from eventlog.envelope import ZERO32, Kind
from eventlog.membership import (
    ROLE_OWNER,
    genesis_payload,
    member_add_payload,
    wrap_context,
)
from eventlog.sealing import Keyring, Position, author_event
from eventlog.store import Store
from replicas.delegates import create_recovery
from replicas.home import Home

FIRST_EPOCH = 1


@dataclass
class Replica:
    """An opened full replica: its home, identity and engine."""

    home: Home
    engine: Engine
    kx: KxKey

    def __post_init__(self) -> None:
        # A removal elsewhere brings a new epoch key wrapped for our kx key: unwrap and keep it.
        self.engine.kx = self.kx
        self.engine.keys_changed = self.home.save_vault_keys

    @property
    def log(self) -> Log:
        return self.engine.log

    @property
    def store(self) -> Store:
        return self.engine.store

    @property
    def name(self) -> str:
        replica = self.home.config().get("replica", {})
        name = replica.get("name") if isinstance(replica, dict) else None
        return name if isinstance(name, str) else ""

    def close(self) -> None:
        self.engine.close()


def init_vault(home: Home, name: str | None = None) -> Replica:
    """A new vault with this replica as founder: genesis, membership, epoch-1 key, profile."""
    home.prepare_new()
    try:
        return _found(home, name or socket.gethostname())
    except BaseException:
        discard_home(home)
        raise


def discard_home(home: Home) -> None:
    """Remove a half-made vault (failed init/join/restore) so a retry finds the home empty."""
    shutil.rmtree(home.identity_dir, ignore_errors=True)
    for path in (home.db_path, home.config_path):
        for extra in ("", "-wal", "-shm"):
            path.with_name(path.name + extra).unlink(missing_ok=True)
    if home.root.exists() and not any(home.root.iterdir()):
        home.root.rmdir()


def _found(home: Home, name: str) -> Replica:
    signer, kx = SigningKey.generate(), KxKey.generate()
    keyring = Keyring({FIRST_EPOCH: random_key()})
    home.write_identity(signer, kx)
    home.save_vault_keys(keyring.epochs())
    home.write_config(name)
    genesis = author_event(
        signer,
        keyring,
        ZERO32,
        Position(1, ZERO32, 1),
        now_ms(),
        Kind.GENESIS,
        0,
        genesis_payload(kx.public),
    )
    store = Store.open(home.db_path, create=True)
    store.set_fact("vault_id", genesis.id)
    log = Log(store)
    log.accept(genesis.raw)
    wrapped = wrap_key(
        kx.public,
        keyring.epochs()[FIRST_EPOCH],
        wrap_context(genesis.id, FIRST_EPOCH, signer.public),
    )
    log.append_local(
        signer,
        keyring,
        Kind.MEMBERSHIP,
        0,
        member_add_payload(signer.public, kx.public, ROLE_OWNER, {FIRST_EPOCH: wrapped}),
    )
    engine = Engine(log, signer, keyring)
    engine.set_profile(name)
    create_recovery(home, engine)
    return Replica(home, engine, kx)


def open_replica(home: Home) -> Replica:
    home.require_vault()
    signer, kx = home.signer(), home.kx()
    store = Store.open(home.db_path)
    try:
        engine = Engine(Log(store), signer, Keyring(home.vault_keys()))
    except BaseException:
        store.close()
        raise
    return Replica(home, engine, kx)


@contextmanager
def opened(home: Home) -> Iterator[Replica]:
    """Open a replica and always flush and close it (so coalesced edits reach the log)."""
    replica = open_replica(home)
    try:
        yield replica
    finally:
        replica.close()


def join_vault(home: Home, vault_id: bytes, signer: SigningKey, kx: KxKey, name: str) -> Replica:
    """A home for a replica that will receive the vault from others (used by pairing)."""
    home.prepare_new()
    home.write_identity(signer, kx)
    home.write_config(name)
    store = Store.open(home.db_path, create=True)
    store.set_fact("vault_id", vault_id)
    engine = Engine(Log(store), signer, Keyring())
    return Replica(home, engine, kx)
