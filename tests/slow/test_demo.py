"""The README's first command: `shoal demo` runs end to end and shows what it claims."""

from __future__ import annotations

import subprocess

import pytest

from tests.slow.conftest import SHOAL

pytestmark = pytest.mark.slow


def test_the_demo_runs_and_shows_convergence_merge_and_search() -> None:
    done = subprocess.run([SHOAL, "demo"], check=False, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "identical on both replicas: True" in out
    merged = out[out.index("Merged in the mirror") :]
    assert "- hat (home server)" in merged and "- sunscreen (laptop)" in merged
    assert "files in the mirror: ['itinerary.html', 'packing.md']" in out
    searched = out[out.index("The laptop searches") :]
    rows = [line for line in searched.splitlines() if line.startswith("│ 0.")]
    assert rows and "itinerary.html" in rows[0]  # the best hit, from the extracted text
    assert out.count("ok\n") >= 2  # both replicas verify clean
