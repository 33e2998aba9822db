"""A real full disk (issue 6): a home on a 4 MB tmpfs filled to the last byte.

``shoal append`` must fail with one typed line (``StorageError``, exit 5) and store nothing,
and the same command must succeed once space returns. Reads while the disk is still full
work: the store falls back to a read-only open (``Store.open_readonly``). Needs
permission to mount a tmpfs (root, as in CI); without it the test is skipped with the reason
(the in-process variant, with SQLite's ``max_page_count``, always runs:
tests/test_adversarial.py).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventlog.errors import StorageError
from tests.slow.conftest import one_line_error, shoal, shoal_json

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while out.write(b"\0" * size) == size:
                    pass
    return filler


def test_disk_full_is_a_typed_error_and_a_retry_succeeds(small_disk: Path) -> None:
    home = small_disk / "home"
    shoal(home, "init", "--name", "a")
    doc = shoal_json(home, "new", "Full disk", "--text", "kept\n")["doc"]
    before = shoal_json(home, "status")["version_vector"]
    filler = fill(small_disk)
    big = "x" * 100_000 + "\n"  # one argument may hold at most 128 KiB
    failed = shoal(home, "append", doc, big, ok=False)
    line = one_line_error(failed)
    assert failed.returncode == StorageError.exit_code, line
    assert "full" in line or "disk" in line, line
    filler.unlink()  # space returns
    assert shoal_json(home, "status")["version_vector"] == before  # nothing half-written
    assert shoal(home, "cat", doc).stdout == "kept\n"
    shoal(home, "append", doc, big)
    assert shoal(home, "cat", doc).stdout == "kept\n" + big
    result = shoal_json(home, "verify")
    assert result["ok"] and result["problems"] == [], result


def test_reads_work_while_the_disk_is_full(small_disk: Path) -> None:
    home = small_disk / "home"
    shoal(home, "init", "--name", "a")
    doc = shoal_json(home, "new", "Full disk", "--text", "kept\n")["doc"]
    fill(small_disk)
    assert shoal(home, "cat", doc, ok=False).stdout == "kept\n"
    assert shoal_json(home, "status")["events"] > 0
    refused = shoal(home, "append", doc, "more\n", ok=False)
    assert refused.returncode == 5 and "read-only" in refused.stderr
