"""Numbered SQL migrations, applied once each, per component.

Each component (``eventlog``, ``engine``, ...) ships ``migrations/NNNN_name.sql`` files in its
package. ``schema_migrations`` records which ran; a database that has migrations this build
does not know is from a newer shoal and is refused rather than guessed at.
"""

from __future__ import annotations

import re
import sqlite3
import time
from importlib import resources

from eventlog.errors import StorageError

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def _scripts(package: str) -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files(package).iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def migrate(conn: sqlite3.Connection, component: str, package: str) -> int:
    """Apply ``package``'s pending migrations for ``component``; return the schema version."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " component TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,"
        " applied_ms INTEGER NOT NULL, PRIMARY KEY (component, version))"
    )
    row = conn.execute(
        "SELECT max(version) FROM schema_migrations WHERE component = ?", (component,)
    ).fetchone()
    current = row[0] or 0
    scripts = _scripts(package)
    known = scripts[-1][0] if scripts else 0
    if current > known:
        raise StorageError(
            f"database schema {component} v{current} is newer than this shoal (v{known})"
        )
    for version, name, sql in scripts:
        if version > current:
            apply_migration(conn, component, version, name, sql)
            current = version
    return current


def apply_migration(
    conn: sqlite3.Connection, component: str, version: int, name: str, sql: str
) -> bool:
    """Run one migration in one transaction; False if another process ran it first.

    Two processes opening one home at once (``serve`` and a CLI command) both read the old
    version before either takes the write lock, so the second used to run the script again
    and fail ("table ... already exists"). The migration's record is now written first in
    the transaction: the second one's insert fails on the record's key, before any of the
    script, and the version it then reads says the work is done."""
    record = (
        "INSERT INTO schema_migrations VALUES "
        f"('{component}', {version}, '{name}', {int(time.time() * 1000)});"
    )
    try:
        conn.executescript(f"BEGIN IMMEDIATE;\n{record}\n{sql}\nCOMMIT;")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        row = conn.execute(
            "SELECT 1 FROM schema_migrations WHERE component = ? AND version = ?",
            (component, version),
        ).fetchone()
        if row is not None:
            return False
        raise StorageError(f"migration {component}/{name} failed: {exc}") from exc
    return True


def check_current(conn: sqlite3.Connection, component: str, package: str) -> None:
    """For a read-only open: the schema must already be current (nothing can be migrated)."""
    known = max((version for version, _, _ in _scripts(package)), default=0)
    try:
        row = conn.execute(
            "SELECT max(version) FROM schema_migrations WHERE component = ?", (component,)
        ).fetchone()
    except sqlite3.Error as exc:
        raise StorageError(f"database schema {component} unreadable: {exc}") from exc
    current = row[0] or 0
    if current != known:
        raise StorageError(
            f"database schema {component} is v{current}, this shoal needs v{known}: it can only"
            " be migrated with free disk space"
        )
