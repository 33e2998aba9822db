"""Processors across real processes: a relay, a laptop that cannot process, home servers that can.

The home servers run ``shoal serve --processors ...`` against an Ollama API server
(``python -m tests.fake_ollama``) for summaries and embeddings, and tesseract for OCR; the
laptop runs ``shoal serve --processors none``. Documents and files made on the laptop are
processed on a server and the results (text, summary, search hits) reach the laptop through
the relay; racing servers do each job once; a claimer killed with SIGKILL is taken over after
its (short, configured) lease.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.slow.conftest import (
    Proc,
    Procs,
    free_port,
    one_line_error,
    shoal,
    shoal_json,
    wait_until,
)

pytestmark = pytest.mark.slow

EMBEDDER = "ollama:all-minilm:latest"


def fake_ollama(procs: Procs, delay: float = 0.0) -> str:
    """Start the Ollama API server as a process (stopped with the others)."""
    port = free_port()
    log = procs.root / f"ollama.{port}.log"
    args = ["--port", str(port), "--delay", str(delay)]
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_ollama", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parents[2],
        )
    proc = Proc("ollama", popen, log, f"http://127.0.0.1:{port}")
    procs.started.append(proc)
    proc.wait_for("fake-ollama listening on")
    return proc.url


def configure(home: Path, ollama: str, *, lease_s: float = 30) -> None:
    """The same plan on every replica; short leases and retries so the test is quick."""
    with (home / "config.toml").open("a", encoding="utf-8") as config:
        config.write(
            "\n[processors]\n"
            f'embed_model = "{EMBEDDER}"\n'
            'llm_model = "llama3.2"\n'
            f"lease_s = {lease_s}\ngrace_s = 0.2\nsettle_s = 0.5\nbackoff_s = 1\n"
            f'\n[ollama]\nhost = "{ollama}"\n'
        )


def vault(procs: Procs, root: Path, names: list[str], ollama: str, lease_s: float) -> list[Path]:
    homes = [root / name for name in names]
    shoal(homes[0], "init", "--name", names[0])
    relay = procs.relay(root / "relay")
    for home in homes[1:]:
        code = shoal(homes[0], "invite", "--relay", relay.url).stdout.split()[-1]
        shoal(home, "join", code, "--name", home.name)
    for home in homes:
        configure(home, ollama, lease_s=lease_s)
    procs.started[-1].url = relay.url
    return homes


def serve(procs: Procs, home: Path, relay: str, offer: str) -> Proc:
    return procs.serve(home, "--relay", relay, "--processors", offer, listen=False)


def results(home: Path) -> Counter[tuple[str, str, str]]:
    """How many job.result events of each job the home holds (after a fold by ``jobs``)."""
    shoal(home, "jobs")
    with contextlib.closing(sqlite3.connect(home / "vault.db")) as conn:
        rows = conn.execute(
            "SELECT processor, hex(doc), hex(input) FROM proc_records WHERE type = 'job.result'"
        ).fetchall()
    return Counter((p, d.lower(), i.lower()) for p, d, i in rows)


def states(home: Path) -> dict[tuple[str, str], dict[str, Any]]:
    return {(j["doc"], j["processor"]): j for j in shoal_json(home, "jobs")}


def all_done(home: Path, docs: list[str]) -> dict[tuple[str, str], dict[str, Any]] | None:
    """Every job of ``docs`` done (files: extract too), as the laptop sees it; else None."""
    found = states(home)
    wanted = {(d, p) for d in docs for p in ("embed", "summary")}
    wanted |= {(d, "extract") for d, p in found if p == "extract" and d in docs}
    if wanted <= set(found) and all(found[k]["state"] == "done" for k in wanted):
        return found
    return None


TEXTS = {
    "Sourdough": "Mix flour, water and salt. Let the dough rise overnight, then bake the bread.",
    "Bicycle": "To fix a flat tyre remove the wheel, find the puncture and patch the tube.",
    "Tomatoes": "Plant tomato seedlings in spring, water them daily and tie them to stakes.",
}


def test_laptop_documents_are_processed_on_the_home_server(procs: Procs, tmp_path: Path) -> None:
    ollama = fake_ollama(procs)
    laptop, server = vault(procs, tmp_path, ["laptop", "server"], ollama, lease_s=30)
    relay = procs.started[-1].url
    docs = {t: shoal_json(laptop, "new", t, "--text", body)["doc"] for t, body in TEXTS.items()}
    image = tmp_path / "scan.png"
    _render_text(image, "INVOICE NUMBER 4711")
    shoal(laptop, "add", str(image))
    [scan] = [f["doc"] for f in shoal_json(laptop, "files") if f["path"].endswith("scan.png")]
    serve(procs, laptop, relay, "none")
    serve(procs, server, relay, "ocr,embed,llm")
    done = wait_until(lambda: all_done(laptop, [*docs.values(), scan]), 60, "results on the laptop")
    server_id = shoal_json(server, "status")["replica"]
    assert {j["by"] for j in done.values()} == {server_id}
    info = shoal_json(laptop, "info", docs["Sourdough"])
    assert info["derived"]["summary"]["text"].startswith("Summary: ")
    assert info["derived"]["summary"]["by"] == server_id
    assert info["derived"]["embedding"]["embedder"] == EMBEDDER
    for title, query in (("Sourdough", "bake bread dough"), ("Bicycle", "flat tyre puncture")):
        hits = shoal_json(laptop, "search", query, "-k", "3")["hits"]
        assert hits[0]["doc"] == docs[title], hits
    assert done[(scan, "extract")]["state"] == "done"
    scanned = shoal_json(laptop, "info", scan)["derived"]["text"]
    assert scanned["method"] == "tesseract" and scanned["by"] == server_id
    hits = shoal_json(laptop, "search", "invoice 4711", "-k", "3")["hits"]
    assert hits[0]["doc"] == scan, hits
    assert set(results(laptop).values()) == {1}


def _render_text(path: Path, text: str) -> None:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("L", (900, 120), 255)
    font = ImageFont.load_default(size=48)
    ImageDraw.Draw(image).text((20, 30), text, fill=0, font=font)
    image.save(path)


def test_racing_servers_do_each_job_once_and_a_killed_claimer_is_taken_over(
    procs: Procs, tmp_path: Path
) -> None:
    ollama = fake_ollama(procs, delay=1.0)  # a slow model: a job lasts long enough to kill
    laptop, one, two = vault(procs, tmp_path, ["laptop", "one", "two"], ollama, lease_s=3)
    relay = procs.started[-1].url
    docs = [
        shoal_json(laptop, "new", f"note {i}", "--text", f"word{i} " * 20)["doc"] for i in range(4)
    ]
    serve(procs, laptop, relay, "none")
    first = serve(procs, one, relay, "llm")
    serve(procs, two, relay, "embed,llm")
    one_id = shoal_json(one, "status")["replica"]

    def held_by_one() -> list[tuple[str, str]]:
        found = states(laptop)
        return [k for k, j in found.items() if j["state"] == "claimed" and j["by"] == one_id]

    held = wait_until(held_by_one, 60, "server one to hold a claim")
    first.kill9()
    done = wait_until(lambda: all_done(laptop, docs), 90, "every job done after the takeover")
    two_id = shoal_json(two, "status")["replica"]
    with contextlib.closing(sqlite3.connect(one / "vault.db")) as conn:
        finished_by_one = {
            (d.lower(), p)
            for p, d in conn.execute(
                "SELECT processor, hex(doc) FROM proc_records WHERE type = 'job.result'"
                " AND author = ?",
                (bytes.fromhex(one_id),),
            )
        }
    for key in held:
        # Server one died holding this job: unless it wrote the result just before the
        # kill, server two took the job over once the lease ran out.
        assert done[key]["by"] == two_id or key in finished_by_one, (key, done[key])
    counts = results(laptop)
    assert len(counts) == 2 * len(docs)
    assert set(counts.values()) == {1}, counts  # raced and taken over, yet each done once


def test_bad_input_is_one_line_errors(procs: Procs, tmp_path: Path) -> None:
    home = tmp_path / "solo"
    shoal(home, "init", "--name", "solo")
    line = one_line_error(shoal(home, "search", "anything", ok=False))
    assert "no search index yet" in line
    assert "no document" in one_line_error(shoal(home, "info", "abcdef", ok=False))
    bad = shoal(home, "serve", "--processors", "gpu", ok=False)
    assert "unknown processor" in one_line_error(bad)
