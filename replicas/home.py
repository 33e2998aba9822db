"""A replica's home directory: where its identity, database and config live.

Layout (DESIGN.md "Storage layout")::

    HOME/identity/replica.key   Ed25519 private key (0600)
    HOME/identity/kx.key        X25519 private key (0600)
    HOME/identity/vault.keys    epoch -> vault key, msgpack (0600)
    HOME/vault.db               the SQLite store (events + derived state)
    HOME/vault.pack             the bytes of big events (16 KiB and up), append-only (0600)
    HOME/config.toml            replica name and settings

The home is ``--home``, else ``$SHOAL_HOME``, else the user's XDG data dir.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import platformdirs

from eventlog.crypto import KxKey, SigningKey
from eventlog.errors import NotFoundError, ShoalError, StorageError, VaultExistsError

SECRET_MODE = 0o600
DIR_MODE = 0o700


def default_home() -> Path:
    env = os.environ.get("SHOAL_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("shoal", appauthor=False))


def write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never world-readable, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_secret(path: Path, data: bytes) -> None:
    """Atomically replace a secret file (write 0600 temp, fsync, rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    write_secret(tmp, data)
    os.replace(tmp, path)


def read_secret(path: Path) -> bytes:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ShoalError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"missing identity file {path}") from exc


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def identity_dir(self) -> Path:
        return self.root / "identity"

    @property
    def db_path(self) -> Path:
        return self.root / "vault.db"

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    def has_vault(self) -> bool:
        return self.db_path.exists() or self.identity_dir.exists()

    def require_vault(self) -> None:
        if not self.db_path.exists():
            raise NotFoundError(f"no vault in {self.root} (run `shoal init` or pass --home)")

    def prepare_new(self) -> None:
        """Make the directories of a new home; refuse one that already holds a vault."""
        if self.has_vault():
            raise VaultExistsError(f"{self.root} already holds a vault")
        self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self.identity_dir.mkdir(mode=DIR_MODE)

    # --- identity ---------------------------------------------------------------------------

    def write_identity(self, signer: SigningKey, kx: KxKey) -> None:
        write_secret(self.identity_dir / "replica.key", signer.private_bytes())
        write_secret(self.identity_dir / "kx.key", kx.private_bytes())

    def signer(self) -> SigningKey:
        return SigningKey(read_secret(self.identity_dir / "replica.key"))

    def kx(self) -> KxKey:
        return KxKey(read_secret(self.identity_dir / "kx.key"))

    def vault_keys(self) -> dict[int, bytes]:
        path = self.identity_dir / "vault.keys"
        if not path.exists():
            return {}
        try:
            keys = msgpack.unpackb(read_secret(path), strict_map_key=False)
        except Exception as exc:
            raise StorageError(f"{path} is corrupt: {exc}") from exc
        if not isinstance(keys, dict):
            raise StorageError(f"{path} is corrupt")
        return {int(k): bytes(v) for k, v in keys.items()}

    def save_vault_keys(self, keys: dict[int, bytes]) -> None:
        replace_secret(self.identity_dir / "vault.keys", msgpack.packb(keys))

    # --- config -----------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            return {}
        try:
            return tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ShoalError(f"{self.config_path}: {exc}") from exc

    def write_config(self, name: str) -> None:
        # TOML basic strings accept JSON's escapes, so json.dumps quotes the name safely.
        import json

        self.config_path.write_text(
            f"# shoal replica settings\n[replica]\nname = {json.dumps(name)}\n", encoding="utf-8"
        )
