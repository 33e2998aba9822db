"""Fixtures for the multi-process sync tests: real ``shoal`` processes on 127.0.0.1.

Every process started here is stopped by the fixture's finalizer (SIGTERM, then SIGKILL).
Waits are bounded polls. ``SHOAL_SLOW_SCALE`` sizes the load (1.0 = the issue's full sizes,
e.g. 100k events; the default 0.2 keeps CI bounded).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

SHOAL = str(Path(sys.executable).parent / "shoal")
SCALE = float(os.environ.get("SHOAL_SLOW_SCALE", "0.2"))

T = TypeVar("T")


def scaled(full: int, minimum: int) -> int:
    """``full`` (the issue's size) times SHOAL_SLOW_SCALE, but at least ``minimum``."""
    return max(minimum, int(full * SCALE))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- one-shot CLI commands -----------------------------------------------------------------------


def shoal(
    home: Path | None,
    *args: str,
    ok: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    where = ["--home", str(home)] if home is not None else []
    proc = subprocess.run(
        [SHOAL, *where, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if ok:
        assert proc.returncode == 0, f"shoal {' '.join(args)}: {proc.stderr}"
    return proc


def shoal_json(home: Path, *args: str) -> Any:
    return json.loads(shoal(home, *args, "--json").stdout)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """A failed command: non-zero exit, no traceback, and it ends with our one error line."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("shoal: error: "), proc.stderr
    return lines[-1]


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """As ``error_line``, and that line is all of stderr (DESIGN: one clear line)."""
    line = error_line(proc)
    assert proc.stderr.strip() == line, proc.stderr
    return line


# --- reading databases while their owners run ----------------------------------------------------


def heads(db: Path) -> dict[str, int]:
    """``author hex -> seq`` of a vault database (a home's or a relay's); {} if not there yet."""
    if not db.exists():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
            rows = conn.execute("SELECT author, seq FROM heads").fetchall()
    except sqlite3.Error:
        return {}
    return {bytes(a).hex(): int(s) for a, s in rows}


def count(db: Path) -> int:
    return sum(heads(db).values())


def relay_db(data: Path, vault: str) -> Path:
    return data / "vaults" / f"{vault}.db"


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read()).decode()


def get_json(url: str) -> Any:
    return json.loads(get_text(url))


# --- long-running processes ----------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for(self, text: str, timeout: float = 30) -> None:
        def seen() -> bool:
            if text in self.output():
                return True
            if not self.alive():
                pytest.fail(f"{self.name} exited ({self.popen.returncode}): {self.output()}")
            return False

        wait_until(seen, timeout, f"{self.name} to print {text!r}")

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> int:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode


@dataclass
class Procs:
    """Starts ``shoal`` processes; the fixture's finalizer stops every one of them."""

    root: Path
    started: list[Proc] = field(default_factory=list)

    def start(
        self, name: str, *args: str, home: Path | None = None, ready: str | None = None
    ) -> Proc:
        where = ["--home", str(home)] if home is not None else []
        log = self.root / f"{name}.{len(self.started)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen([SHOAL, *where, *args], stdout=out, stderr=subprocess.STDOUT)
        proc = Proc(name, popen, log)
        self.started.append(proc)
        if ready is not None:
            proc.wait_for(ready)
        return proc

    def relay(self, data: Path, port: int | None = None) -> Proc:
        port = port or free_port()
        proc = self.start(
            "relay",
            "relay",
            "--data",
            str(data),
            "--listen",
            f"127.0.0.1:{port}",
            ready="shoal relay listening on",
        )
        proc.url = f"http://127.0.0.1:{port}"
        return proc

    def serve(self, home: Path, *args: str, listen: bool = True) -> Proc:
        extra = ["--listen", f"127.0.0.1:{free_port()}"] if listen else []
        proc = self.start(
            f"serve-{home.name}",
            "serve",
            *args,
            *extra,
            home=home,
            ready=f"listening on http://{extra[1]}" if listen else None,
        )
        if listen:
            proc.url = "http://" + extra[1]
        return proc

    def close(self) -> None:
        for proc in self.started:
            if proc.alive():
                proc.popen.terminate()
        for proc in self.started:
            try:
                proc.popen.wait(10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    running = Procs(tmp_path)
    try:
        yield running
    finally:
        running.close()


# --- a slow network ------------------------------------------------------------------------


class ThrottledProxy:
    """A TCP proxy on 127.0.0.1 that forwards at most ``rate`` bytes/s each way.

    It makes "mid-transfer" a reliable moment to kill a process at, whatever the machine's
    speed. When either side closes, both sides of that connection are closed.
    """

    def __init__(self, upstream_port: int, rate: float) -> None:
        self.upstream_port = upstream_port
        self.rate = rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                self.threads.append(thread)
                thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(8192)
                if not data:
                    break
                dst.sendall(data)
                time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            # Shutting both down wakes the other direction's thread, which closes its own
            # source: each socket is closed once, by the thread that reads it. Closed with a
            # reset, as a crashed relay's kernel answers data it will never read. A socket
            # that is only shut down (or closed after it advertised a zero window) leaves
            # the sender probing a full buffer until TCP gives up a minute later.
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                src.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            src.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def throttle() -> Iterator[Callable[[int, float], ThrottledProxy]]:
    made: list[ThrottledProxy] = []

    def make(upstream_port: int, rate: float) -> ThrottledProxy:
        proxy = ThrottledProxy(upstream_port, rate)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()
