"""Padding overhead: how many bytes the size buckets add on the W1 and W3a workloads.

Runs ``bench.w1_local_writes`` and ``bench.w3a_trace`` (``--quick`` unless ``--full``) in this
process with the sealing path instrumented: for every sealed event it records the payload's
length, the padded plaintext's length and the whole event's wire length. Reports the bytes
added by padding, as a share of the payloads and of the events on the wire (what the relay
stores and every peer receives). W1's limit side seals the same payloads again, so its
counts double; the ratios are unaffected.

    .venv/bin/python -m bench.padding_overhead [--full]
"""

from __future__ import annotations

import argparse
import contextlib
import io
from dataclasses import dataclass
from typing import Any

from bench import w1_local_writes, w3a_trace
from eventlog import sealing


@dataclass
class Tally:
    events: int = 0
    payload: int = 0
    padded: int = 0
    wire: int = 0

    def line(self, name: str) -> str:
        added = self.padded - self.payload
        return (
            f"{name}: {self.events:,} sealed events, payload {self.payload:,} B, "
            f"padding added {added:,} B = {100 * added / max(self.payload, 1):.1f}% of payloads, "
            f"{100 * added / max(self.wire, 1):.1f}% of the {self.wire:,} B on the wire"
        )


def measure(run: Any, argv: list[str]) -> Tally:
    tally = Tally()
    real = dict(vars(sealing))
    real_pad, real_assemble = real["pad"], real["assemble"]

    def pad(payload: bytes) -> bytes:
        padded: bytes = real_pad(payload)
        tally.events += 1
        tally.payload += len(payload)
        tally.padded += len(padded)
        return padded

    def assemble(*args: Any, **kwargs: Any) -> Any:
        event = real_assemble(*args, **kwargs)
        if event.epoch:
            tally.wire += len(event.raw)
        return event

    patched: dict[str, Any] = {"pad": pad, "assemble": assemble}
    for name, function in patched.items():
        setattr(sealing, name, function)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            run(argv)
    finally:
        for name in patched:
            setattr(sealing, name, real[name])
    return tally


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--full", action="store_true", help="the full workloads, not --quick")
    args = p.parse_args(argv)
    flags = [] if args.full else ["--quick"]
    print(measure(w1_local_writes.main, flags).line("W1 local writes"))
    print(measure(w3a_trace.main, flags).line("W3a editing trace"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
