"""Device removal across real processes: a relay and three replicas, one of them removed.

The removed replica's later events are refused by the relay (and it is told so with close
code 4410), the other two keep syncing under the new key epoch, and the removed one cannot
open anything sealed in that epoch even with every byte the relay holds.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from eventlog.envelope import decode_event
from eventlog.errors import DecryptError, MissingKeyError
from eventlog.sealing import Keyring
from eventlog.store import Store
from replicas.home import Home
from tests.slow.conftest import (
    Procs,
    error_line,
    heads,
    relay_db,
    shoal,
    shoal_json,
)
from tests.slow.test_sync_processes import marker, vault_of

pytestmark = pytest.mark.slow


def relay_events(db: Path) -> list[bytes]:
    with contextlib.closing(Store.open(db)) as store:
        return [row.raw for row in store.events_after(0, 1_000_000)]


def test_a_removed_device_is_refused_and_locked_out(procs: Procs, tmp_path: Path) -> None:
    relay = procs.relay(tmp_path / "relay")
    alpha, beta, gamma = (tmp_path / n for n in ("alpha", "beta", "gamma"))
    shoal(alpha, "init", "--name", "alpha")
    for home in (beta, gamma):
        code = shoal(alpha, "invite", "--relay", relay.url).stdout.split()[-1]
        shoal(home, "join", code, "--name", home.name)
    shoal(gamma, "new", marker("gamma-before"), "--text", "seen by everyone\n")
    for home in (gamma, alpha, beta):
        shoal(home, "sync", relay.url)
    vault = vault_of(alpha)
    gamma_id = shoal_json(gamma, "status")["replica"]
    gamma_seq = heads(relay_db(tmp_path / "relay", vault))[gamma_id]

    removed = shoal_json(alpha, "devices", "remove", gamma_id[:10])
    assert removed["removed"] == gamma_id and removed["cutoff"] == gamma_seq
    assert gamma_id not in removed["recipients"]
    shoal(alpha, "sync", relay.url)
    listed = {d["id"]: d for d in shoal_json(alpha, "devices")}
    assert listed[gamma_id]["removed"] and listed[gamma_id]["epochs"] == [1]
    table = shoal(alpha, "devices").stdout
    assert "REMOVED" in table

    # The removed device writes and tries to sync: the relay refuses it with its own code.
    late_title = marker("gamma-after")
    shoal(gamma, "new", late_title, "--text", "nobody should get this\n")
    refused = shoal(gamma, "sync", relay.url, ok=False)
    assert "4410" in error_line(refused) and "removed" in error_line(refused)
    assert heads(relay_db(tmp_path / "relay", vault))[gamma_id] == gamma_seq

    # The remaining two keep syncing, under the new epoch.
    secret_title, secret_text = marker("after-removal"), marker("for alpha and beta")
    doc = shoal_json(alpha, "new", secret_title, "--text", secret_text + "\n")["doc"]
    shoal(alpha, "sync", relay.url)
    shoal(beta, "sync", relay.url)
    assert shoal(beta, "cat", doc).stdout == secret_text + "\n"
    shoal(beta, "append", doc, "beta agrees\n")
    shoal(beta, "sync", relay.url)
    shoal(alpha, "sync", relay.url)
    assert shoal(alpha, "cat", doc).stdout == secret_text + "\nbeta agrees\n"
    epoch = shoal_json(beta, "status")["epoch"]
    assert epoch == shoal_json(alpha, "status")["epoch"] != 1
    assert late_title not in {d["title"] for d in shoal_json(beta, "docs")}

    # Every new-epoch event the relay holds stays closed to the removed device's keys.
    new_epoch = [decode_event(r) for r in relay_events(relay_db(tmp_path / "relay", vault))]
    new_epoch = [e for e in new_epoch if e.epoch == epoch]
    assert len(new_epoch) >= 2
    gamma_keys = Keyring(Home(gamma).vault_keys())
    assert epoch not in gamma_keys.epochs()
    for event in new_epoch:
        with pytest.raises((MissingKeyError, DecryptError)):
            gamma_keys.open_payload(event)
        # Even pretending the epoch were 1 (its old key) opens nothing.
        with pytest.raises((MissingKeyError, DecryptError)):
            Keyring({epoch: gamma_keys.epochs()[1]}).open_payload(event)
