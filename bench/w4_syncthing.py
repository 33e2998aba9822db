"""W4's Syncthing pair: two instances on 127.0.0.1 driven through their REST API, and the
helpers W4's runs share with it (installing Debian packages, waiting, keeping child logs).

How the instances are configured, and why, is in ``bench.w4_files``'s docstring.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from bench._common import OUT_DIR, progress
from bench.w2_sync import free_port

LOGS = OUT_DIR / "w4-logs"
FOLDER_OPTIONS: dict[str, Any] = {
    "type": "sendreceive",
    "fsWatcherEnabled": True,
    "fsWatcherDelayS": 1,
    "rescanIntervalS": 3600,
}
ST_OPTIONS: dict[str, Any] = {
    "globalAnnounceEnabled": False,
    "localAnnounceEnabled": False,
    "relaysEnabled": False,
    "natEnabled": False,
    "urAccepted": -1,
    "crashReportingEnabled": False,
    "autoUpgradeIntervalH": 0,
    "startBrowser": False,
    "setLowPriority": False,
}
ST_ENV = {"STNODEFAULTFOLDER": "1", "STNOUPGRADE": "1", "STNORESTART": "1"}


class UnavailableError(RuntimeError):
    """A system cannot run here (not installed, or the CLI lacks what the workload needs)."""


def keep_log(path: Path, name: str) -> None:
    """Keep a child's log under ``bench/out/w4-logs/`` (the run's folders are deleted)."""
    with contextlib.suppress(OSError):
        LOGS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, LOGS / name)


def wait_for(label: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {label}")
        time.sleep(0.1)


def ensure_installed(commands: list[str]) -> None:
    """``apt-get install`` the Debian packages of these commands if any is missing."""
    missing = [c for c in commands if shutil.which(c) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise UnavailableError(
            f"{', '.join(missing)} not installed (apt-get install {' '.join(missing)})"
        )
    progress(f"installing {', '.join(missing)} from Debian")
    install = ["apt-get", "install", "-y", "-q", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, capture_output=True, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
        done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise UnavailableError(
                f"apt-get install {' '.join(missing)} failed: {done.stderr[-500:]}"
            )


def syncthing_version() -> str:
    out = subprocess.run(["syncthing", "--version"], capture_output=True, text=True, check=False)
    return " ".join(out.stdout.split()[:2])


class Syncthing:
    """One Syncthing instance on 127.0.0.1, driven through its REST API."""

    def __init__(self, home: Path, name: str) -> None:
        self.home, self.name = home, name
        self.gui_port, self.sync_port = free_port(), free_port()
        env = {**os.environ, **ST_ENV}
        subprocess.run(
            ["syncthing", "generate", f"--home={home}", "--no-default-folder"],
            capture_output=True,
            check=True,
            env=env,
        )
        root = ElementTree.parse(home / "config.xml").getroot()
        key = root.findtext("gui/apikey")
        if not key:
            raise RuntimeError(f"no API key in {home / 'config.xml'}")
        self.key = key
        self.proc: subprocess.Popen[bytes] | None = None
        self.device_id = ""

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.gui_port}{path}",
            data=data,
            method=method,
            headers={"X-API-Key": self.key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            text = resp.read()
        return json.loads(text) if text.strip() else None

    def start(self) -> None:
        log = open(self.home / "syncthing.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [
                "syncthing",
                "serve",
                f"--home={self.home}",
                "--no-browser",
                "--no-restart",
                "--no-upgrade",
                "--no-default-folder",
                f"--gui-address=http://127.0.0.1:{self.gui_port}",
                "--logflags=3",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **ST_ENV},
        )
        log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"syncthing {self.name} exited: {self.log_tail()}")
            try:
                return bool(self.api("GET", "/rest/system/ping", timeout=2))
            except (OSError, urllib.error.URLError):
                return False

        wait_for(f"syncthing {self.name} to answer", up)
        self.device_id = str(self.api("GET", "/rest/system/status")["myID"])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(OSError, urllib.error.URLError):
            self.api("POST", "/rest/system/shutdown", timeout=5)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, chars: int = 1500) -> str:
        return (self.home / "syncthing.log").read_text(errors="replace")[-chars:]

    def configure(self) -> None:
        options = {**ST_OPTIONS, "listenAddresses": [f"tcp://127.0.0.1:{self.sync_port}"]}
        self.api("PATCH", "/rest/config/options", options)

    def introduce(self, other: Syncthing) -> None:
        self.api(
            "POST",
            "/rest/config/devices",
            {
                "deviceID": other.device_id,
                "name": other.name,
                "addresses": [f"tcp://127.0.0.1:{other.sync_port}"],
            },
        )

    def connected_to(self, other: Syncthing) -> bool:
        connections = self.api("GET", "/rest/system/connections")["connections"]
        return bool(connections.get(other.device_id, {}).get("connected"))

    def add_folder(self, folder_id: str, path: Path, devices: list[str]) -> None:
        (path / ".stfolder").mkdir(parents=True, exist_ok=True)
        body = {
            "id": folder_id,
            "label": folder_id,
            "path": str(path),
            "devices": [{"deviceID": d} for d in devices],
            **FOLDER_OPTIONS,
        }
        self.api("POST", "/rest/config/folders", body)

    def remove_folder(self, folder_id: str) -> None:
        with contextlib.suppress(OSError, urllib.error.URLError):
            self.api("DELETE", f"/rest/config/folders/{folder_id}")

    def folder_status(self, folder_id: str) -> dict[str, Any]:
        status: dict[str, Any] = self.api("GET", f"/rest/db/status?folder={folder_id}")
        return status

    def scan(self, folder_id: str) -> None:
        """``POST /rest/db/scan`` returns when the scan is done: call it from a thread."""

        def call() -> None:
            with contextlib.suppress(OSError, urllib.error.URLError):
                self.api("POST", f"/rest/db/scan?folder={folder_id}", timeout=3600)

        threading.Thread(target=call, daemon=True).start()


@contextlib.contextmanager
def syncthing_pair(tmp: Path) -> Iterator[tuple[Syncthing, Syncthing]]:
    """Two configured, connected instances; both stopped on the way out, whatever happens."""
    ensure_installed(["syncthing"])
    a, b = Syncthing(tmp / "st-a", "A"), Syncthing(tmp / "st-b", "B")
    try:
        for node in (a, b):
            node.start()
            node.configure()
            node.stop()  # setLowPriority applies at start-up
            node.start()
        a.introduce(b)
        b.introduce(a)
        wait_for("the Syncthing instances to connect", lambda: a.connected_to(b), 120)
        yield a, b
    finally:
        for node in (a, b):
            node.stop()
            keep_log(node.home / "syncthing.log", f"syncthing-{node.name.lower()}.log")
