"""``shoal demo``: a relay and two replicas on 127.0.0.1, in a temporary directory.

A "laptop" founds a vault, writes documents and invites a "home server" through the relay;
both run ``shoal serve`` (live sync through the relay) while each edits the same document at
the same time; then the demo prints the converged document on both, the merged history and
the roster, and verifies both logs. The laptop also watches a folder that the home server
mirrors (a text file edited on both sides at once merges), and the home server extracts and
embeds text that the laptop then searches (when the ``processing`` extra is installed).
Every step is a real ``shoal`` process, printed as the command a user would type.
Everything is stopped and removed afterwards.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eventlog.errors import ShoalError

Say = Callable[[str], None]


def _shoal() -> list[str]:
    script = Path(sys.executable).parent / "shoal"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Demo:
    def __init__(self, root: Path, say: Say) -> None:
        self.root = root
        self.say = say
        self.children: list[subprocess.Popen[str]] = []

    def shoal(self, home: str | None, *args: str, show: bool = True) -> str:
        where = ["--home", str(self.root / home)] if home else []
        self.say(f"\n[{home or 'relay'}]$ shoal {shlex.join(args)}")
        proc = subprocess.run(
            [*_shoal(), *where, *args], text=True, capture_output=True, check=False, timeout=120
        )
        if proc.returncode != 0:
            raise ShoalError(f"demo: shoal {args[0]} failed: {proc.stderr.strip()}")
        if show and proc.stdout.strip():
            self.say(proc.stdout.rstrip())
        return proc.stdout.strip()

    def json(self, home: str, *args: str) -> Any:
        return json.loads(self.shoal(home, *args, "--json", show=False))

    def start(self, home: str | None, *args: str) -> subprocess.Popen[str]:
        where = ["--home", str(self.root / home)] if home else []
        self.say(f"\n[{home or 'relay'}]$ shoal {shlex.join(args)} &")
        child = subprocess.Popen(
            [*_shoal(), *where, *args], text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.children.append(child)
        assert child.stdout is not None
        self.say(child.stdout.readline().rstrip())
        return child

    def stop_all(self) -> None:
        for child in self.children:
            child.terminate()
        for child in self.children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


@contextmanager
def _demo(say: Say) -> Iterator[Demo]:
    with tempfile.TemporaryDirectory(prefix="shoal-demo-") as tmp:
        demo = Demo(Path(tmp), say)
        try:
            yield demo
        finally:
            demo.stop_all()


def _converged(demo: Demo, doc: str, timeout: float = 30.0) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = [demo.json(h, "status")["version_vector"] for h in ("laptop", "server")]
        if states[0] == states[1]:
            return (
                demo.json("laptop", "cat", doc)["body"],
                demo.json("server", "cat", doc)["body"],
            )
        if time.monotonic() > deadline:
            raise ShoalError("demo: replicas did not converge within 30 s")
        time.sleep(0.3)


PACKING = "# Packing\n\n- passport\n- phone charger\n"
ITINERARY = (
    "<html><body><h1>Itinerary</h1><p>Lisbon: the tram 28 up to the castle.</p>"
    "<p>Porto: port cellars across the Douro river in Vila Nova de Gaia.</p></body></html>"
)


def _wait(what: str, ready: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise ShoalError(f"demo: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.2)


def _files(demo: Demo, watched: Path, mirror: Path) -> None:
    say = demo.say
    _wait(
        "the mirror",
        lambda: (mirror / "packing.md").exists() and (mirror / "itinerary.html").exists(),
    )
    say("\n== The laptop's folder arrived in the home server's mirror, through the relay")
    demo.shoal("server", "files")
    say("\n== The same text file edited on both machines at once")
    (watched / "packing.md").write_text(PACKING + "- sunscreen (laptop)\n")
    (mirror / "packing.md").write_text(
        PACKING.replace("- passport", "- hat (home server)\n- passport")
    )
    say("[laptop]  appended '- sunscreen (laptop)' to laptop-docs/packing.md")
    say("[server]  inserted '- hat (home server)' in server-mirror/packing.md")

    def merged() -> bool:
        text = (mirror / "packing.md").read_text()
        return "sunscreen" in text and "hat" in text

    _wait("the merge", merged)
    say("\n== Merged in the mirror: both edits kept, no conflict copy")
    say((mirror / "packing.md").read_text().rstrip())
    say(f"files in the mirror: {sorted(p.name for p in mirror.iterdir() if p.is_file())}")


def _processing(demo: Demo) -> None:
    import importlib.util

    say = demo.say
    if not all(importlib.util.find_spec(m) for m in ("docling", "transformers", "usearch")):
        say(
            "\n(Processors skipped: install shoal[processing] for text extraction, OCR and search.)"
        )
        return
    say("\n== The home server has the hardware: it extracts text and embeds it (once, for all)")
    demo.shoal("server", "process", "--processors", "extract,embed")

    def indexed() -> bool:
        try:
            hits = demo.json("laptop", "search", "castle tram")["hits"]
        except ShoalError:
            return False
        return any(hit["title"] == "itinerary.html" for hit in hits)

    _wait("the results on the laptop", indexed, timeout=90)
    say("\n== The laptop searches what the home server computed (it recomputes nothing)")
    demo.shoal("laptop", "search", "castle tram", "-k", "3")
    demo.shoal("laptop", "jobs")


def run_demo(say: Say) -> None:
    with _demo(say) as demo:
        relay = f"http://127.0.0.1:{free_port()}"
        say("== A blind relay in the 'cloud' (it stores only ciphertext)")
        demo.start(None, "relay", "--data", str(demo.root / "relay"), "--listen", relay[7:])
        say("\n== The laptop founds a vault and writes")
        demo.shoal("laptop", "init", "--name", "laptop")
        doc = demo.shoal("laptop", "new", "Trip plan", "--text", "Day 1: arrive in Lisbon\n")
        demo.shoal("laptop", "new", "Reading list", "--text", "* Local-first software\n")
        demo.shoal("laptop", "tag", doc[:8], "travel")
        say("\n== The laptop invites the home server; the code never passes the relay")
        code = demo.shoal("laptop", "invite", "--relay", relay, show=False).split()[-1]
        say(f"shoal join {code[:40]}...")
        demo.shoal("server", "join", code, "--name", "home-server")
        say("\n== Files: the laptop watches a folder, the home server mirrors the vault's files")
        watched, mirror = demo.root / "laptop-docs", demo.root / "server-mirror"
        watched.mkdir()
        mirror.mkdir()
        (watched / "packing.md").write_text(PACKING)
        (watched / "itinerary.html").write_text(ITINERARY)
        say(f"(wrote {watched.name}/packing.md and {watched.name}/itinerary.html)")
        say("\n== Both run the sync daemon; each edits the trip plan at the same time")
        demo.start("laptop", "serve", "--relay", relay, "--watch", str(watched))
        demo.start("server", "serve", "--relay", relay, "--mirror", str(mirror))
        edits = [
            subprocess.Popen([*_shoal(), "--home", str(demo.root / home), "append", doc, text])
            for home, text in (
                ("laptop", "Day 2: Sintra (laptop)\n"),
                ("server", "Day 3: Porto by train (home server)\n"),
            )
        ]
        say(f"\n[laptop]$ shoal append {doc[:8]} 'Day 2: Sintra (laptop)'   # concurrently")
        say(f"[server]$ shoal append {doc[:8]} 'Day 3: Porto by train (home server)'")
        if any(edit.wait(60) != 0 for edit in edits):
            raise ShoalError("demo: a concurrent append failed")
        demo.shoal("server", "set-title", doc[:8], "Portugal trip plan")
        laptop_text, server_text = _converged(demo, doc)
        say("\n== Converged: the same document on both replicas, both edits kept")
        demo.shoal("laptop", "cat", doc[:8])
        demo.shoal("server", "cat", doc[:8])
        say(f"identical on both replicas: {laptop_text == server_text}")
        demo.shoal("server", "docs")
        say("\n== The merged history")
        demo.shoal("server", "history", doc[:8])
        _files(demo, watched, mirror)
        _processing(demo)
        demo.shoal("laptop", "devices")
        demo.shoal("laptop", "backup", relay)
        demo.shoal("laptop", "verify")
        demo.shoal("server", "verify")
        say(f"\nDemo finished; stopping the daemons and the relay and removing {demo.root}.")
