"""Shared helpers for the benchmarks: arguments, timing, the result block and the JSON line.

Every benchmark measures its own baseline (a physical limit or a peer system) in the same run
and reports the *ratio*, because absolute times on a small, shared machine are noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "out"
REPO_ROOT = Path(__file__).resolve().parent.parent


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller size, for a fast check")
    return p


def child_env(bytecode_cache: bool = True) -> dict[str, str]:
    """The environment for a ``shoal`` child process, with a bytecode cache by default.

    The sandbox sets ``PYTHONDONTWRITEBYTECODE=1``, so without this every child compiles all
    of shoal's modules from source at start (pip compiles an installed shoal's at install
    time). The cache lives under ``bench/out/pycache`` (``PYTHONPYCACHEPREFIX``): no ``.pyc``
    is written into the source tree. Call :func:`warm_bytecode` once before timing.
    """
    env = dict(os.environ)
    env.pop("SHOAL_HOME", None)
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(OUT_DIR / "pycache")
    return env


def warm_bytecode() -> None:
    """Fill the children's bytecode cache (untimed): import what ``shoal`` commands import."""
    modules = "cli, replicas.node, replicas.relay, replicas.apply_helper, replicas.folders"
    subprocess.run(
        [sys.executable, "-c", f"import {modules}"], cwd=REPO_ROOT, env=child_env(), check=True
    )


def now() -> float:
    return time.perf_counter()


def median(values: list[float]) -> float:
    return statistics.median(values)


def progress(message: str) -> None:
    """Progress goes to stderr so the result block on stdout stays clean."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def revision() -> str:
    """The commit measured, with ``+dirty`` if the working tree (outside bench/) differs."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "revision": revision(),
    }


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def report(name: str, title: str, lines: list[tuple[str, str]], record: dict[str, Any]) -> Path:
    """Print the result block and write ``bench/out/<name>.json`` (one JSON line)."""
    width = max(len(k) for k, _ in lines)
    print()
    print(f"== {title} ==  [{revision()}]")
    for key, value in lines:
        print(f"  {key.ljust(width)}  {value}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    record = {"bench": name, "time": int(time.time()), "machine": machine(), **record}
    path.write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
    print(f"  (written to {path.relative_to(REPO_ROOT)})")
    return path
