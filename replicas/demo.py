"""``shoal demo``: a guided run of shoal on embedded defaults, in a temporary directory.

Every step is a real ``shoal`` process on a real home, printed as the command a user would
type, so the demo doubles as a tour of the CLI. Everything is removed afterwards.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from eventlog.errors import ShoalError


def _shoal() -> list[str]:
    script = Path(sys.executable).parent / "shoal"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def run_demo(say: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="shoal-demo-") as tmp:
        home = Path(tmp) / "laptop"

        def shoal(*args: str, capture: bool = False) -> str:
            say(f"\n$ shoal {shlex.join(args)}")
            proc = subprocess.run(
                [*_shoal(), "--home", str(home), *args], text=True, capture_output=True, check=False
            )
            if proc.returncode != 0:
                raise ShoalError(f"demo: shoal {args[0]} failed: {proc.stderr.strip()}")
            if not capture:
                say(proc.stdout.rstrip())
            return proc.stdout.strip()

        shoal("init", "--name", "laptop")
        doc = shoal(
            "new", "Reading list", "--text", "* Designing Data-Intensive Apps\n", capture=True
        )
        say(doc)
        shoal("append", doc[:8], "* Local-first software (Kleppmann et al.)\n")
        shoal("set-title", doc[:8], "Reading list 2026")
        shoal("tag", doc[:8], "books")
        notes = shoal("new", "Meeting notes", "--text", "Agenda: sync engine\n", capture=True)
        say(notes)
        shoal("docs")
        shoal("cat", doc[:8])
        shoal("history", doc[:8])
        first = shoal("log", "--doc", doc, "--json", capture=True)
        first_id = json.loads(first)[-1]["id"]
        shoal("cat", doc[:8], "--at", first_id[:12])
        shoal("log", "--limit", "5")
        shoal("verify")
        shoal("status")
