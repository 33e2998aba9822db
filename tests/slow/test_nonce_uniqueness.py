"""Nonce uniqueness over many seals, across process restarts (issue 6).

Several processes, one after another (each a restart), append sealed events to one home
through the real write path (``Log.append_local``); then every stored salt and every one-time
key derived from it must be distinct. Seals: ``SHOAL_NONCE_SEALS`` if set, else 1,000,000 at
``SHOAL_SLOW_SCALE=1`` and 20,000 otherwise.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eventlog.crypto import SALT_BYTES, one_time_key
from eventlog.envelope import decode_event
from eventlog.store import Store
from replicas.home import Home
from replicas.vault import init_vault, open_replica
from tests.slow.conftest import SCALE

pytestmark = pytest.mark.slow

SEALS = int(os.environ.get("SHOAL_NONCE_SEALS", "1000000" if SCALE >= 1 else "20000"))
RESTARTS = 5

WRITER = """
import sys
from pathlib import Path
from eventlog.envelope import Kind
from replicas.home import Home
from replicas.vault import open_replica

home, count = Path(sys.argv[1]), int(sys.argv[2])
replica = open_replica(Home(home))
signer, keyring = replica.engine.signer, replica.engine.keyring
for start in range(0, count, 5000):
    with replica.store.atomic():
        for i in range(start, min(count, start + 5000)):
            replica.log.append_local(signer, keyring, Kind.DATA, 1, {"t": "test.seal", "i": i})
replica.store.close()
"""


def test_no_nonce_repeats_across_restarts(tmp_path: Path) -> None:
    home = tmp_path / "a"
    init_vault(Home(home), "a").close()
    for _ in range(RESTARTS):
        subprocess.run(
            [sys.executable, "-c", WRITER, str(home), str(SEALS // RESTARTS)],
            check=True,
            timeout=3600,
            cwd=Path(__file__).parents[2],
        )
    with contextlib.closing(Store.open(home / "vault.db")) as store:
        raws = [row.raw for row in store.events_after(0, 10**9) if row.epoch != 0]
    with contextlib.closing(open_replica(Home(home))) as replica:
        events_key = replica.engine.keyring.events_key(1)
    salts: set[bytes] = set()
    keys: set[bytes] = set()
    for raw in raws:
        salt = decode_event(raw).header.nonce
        assert len(salt) == SALT_BYTES
        salts.add(salt)
        keys.add(one_time_key(events_key, salt))
    assert len(raws) >= SEALS // RESTARTS * RESTARTS
    assert len(salts) == len(raws) and len(keys) == len(raws)
    print(f"\nnonces: {len(raws)} seals by {RESTARTS} processes, every salt and key distinct")
