"""What a relay stores and what crosses the wire: no plaintext, no ids, no hashes, no sizes.

Real processes: a relay, two replicas, and a recording TCP proxy between them and the relay.
We plant titles, bodies, tags, device names, a file's path and mime type, and compute the
SHA-256 and BLAKE2b of the file's content (what an observer holding the same file would look
for), then search the relay's data directory and every byte captured both ways (WebSocket
frames from clients are masked, so the capture is unmasked before searching). A positive
control checks that the search does find what is public: the replicas' author keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
from pathlib import Path

import pytest
from blake3 import blake3

from eventlog.envelope import decode_event
from eventlog.padding import padded_size
from tests.slow.conftest import Procs, ThrottledProxy, relay_db, shoal, shoal_json
from tests.slow.test_removal_processes import relay_events
from tests.slow.test_sync_processes import all_files, marker, vault_of

pytestmark = pytest.mark.slow
TAG_BYTES = 16


class RecordingProxy(ThrottledProxy):
    """A pass-through proxy that keeps every byte of every connection, per direction."""

    def __init__(self, upstream_port: int) -> None:
        self.streams: dict[tuple[int, int], bytearray] = {}
        self.record_lock = threading.Lock()
        super().__init__(upstream_port, rate=1e12)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        key = (src.fileno(), dst.fileno())
        with self.record_lock:
            buffer = self.streams.setdefault(key, bytearray())
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buffer += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def captured(self) -> list[bytes]:
        """Each direction of each connection, with WebSocket payloads unmasked."""
        with self.record_lock:
            return [unmask_websocket(bytes(s)) for s in self.streams.values()]


def unmask_websocket(stream: bytes) -> bytes:
    """The HTTP upgrade, then every frame's payload in the clear (RFC 6455 section 5.2)."""
    start = stream.find(b"\r\n\r\n")
    if start < 0:
        return stream
    pos = start + 4
    out = bytearray(stream[:pos])
    while pos + 2 <= len(stream):
        masked, length = stream[pos + 1] & 0x80, stream[pos + 1] & 0x7F
        pos += 2
        if length == 126:
            length, pos = int.from_bytes(stream[pos : pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(stream[pos : pos + 8], "big"), pos + 8
        key = stream[pos : pos + 4] if masked else b""
        pos += 4 if masked else 0
        payload = stream[pos : pos + length]
        pos += length
        if key and payload:
            mask = (key * (len(payload) // 4 + 1))[: len(payload)]
            value = int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")
            payload = value.to_bytes(len(payload), "big")
        out += payload
    return bytes(out)


def test_the_relay_sees_no_names_ids_hashes_or_exact_sizes(procs: Procs, tmp_path: Path) -> None:
    data = tmp_path / "relay"
    relay = procs.relay(data)
    proxy = RecordingProxy(int(relay.url.rsplit(":", 1)[1]))
    try:
        a, b = tmp_path / "a", tmp_path / "b"
        device_a, device_b = marker("DeviceA"), marker("DeviceB")
        shoal(a, "init", "--name", device_a)
        code = shoal(a, "invite", "--relay", proxy.url).stdout.split()[-1]
        shoal(b, "join", code, "--name", device_b)
        title, body, tag = marker("Title"), marker("Body"), marker("tag")
        doc = shoal_json(a, "new", title, "--text", body + "\n")["doc"]
        shoal(a, "tag", doc, tag)
        src = tmp_path / "files"
        src.mkdir()
        name = marker("quarterly-report") + ".odt"
        content = os.urandom(300 * 1024)  # above the inline limit: it travels in blob.chunk events
        (src / name).write_bytes(content)
        small_name = marker("shopping-list") + ".md"
        small = f"# {marker('groceries')}\n\nmilk\n".encode()
        (src / small_name).write_bytes(small)
        shoal(a, "add", str(src))
        for home in (a, b, a):
            shoal(home, "sync", proxy.url)
        listed = {f["path"]: f for f in shoal_json(b, "files")}
        assert set(listed) == {name, small_name}  # it synced: b holds both files
        mime = listed[name]["mime"]
        assert mime == "application/vnd.oasis.opendocument.text"
        doc_ids = [doc, *(f["doc"] for f in listed.values())]
        keyed = [f["hash"] for f in listed.values()]
        text_planted = [device_a, device_b, title, body, tag, name, small_name, mime, "milk"]
        binary_planted = [
            hashlib.sha256(content).digest(),
            hashlib.blake2b(content, digest_size=32).digest(),
            hashlib.blake2b(content).digest(),
            blake3(content).digest(),
            hashlib.sha256(small).digest(),
            content[:64],
            content[-64:],
            *(bytes.fromhex(d) for d in doc_ids),
            *(bytes.fromhex(h) for h in keyed),
        ]
        needles = (
            [t.encode() for t in text_planted]
            + binary_planted
            + [x.hex().encode() for x in binary_planted[:5]]
            + [d.encode() for d in doc_ids]
        )

        captured = proxy.captured()
        assert sum(map(len, captured)) > len(content)  # the file's ciphertext went through
        public = [bytes.fromhex(shoal_json(h, "status")["replica"]) for h in (a, b)]
        for key in public:  # the positive control: public header fields are found
            assert any(key in stream for stream in captured)
        stored = [p.read_bytes() for p in all_files(data)]
        assert any(public[0] in blob for blob in stored)
        for needle in needles:
            for stream in captured:
                assert needle not in stream, f"{needle!r} crossed the wire"
            for blob in stored:
                assert needle not in blob, f"{needle!r} is in the relay's data"

        # Sizes: every sealed body the relay holds is a padding bucket, never an exact size.
        events = [decode_event(r) for r in relay_events(relay_db(data, vault_of(a)))]
        sealed = [e for e in events if e.epoch]
        assert len(sealed) >= 5
        for event in sealed:
            plain = len(event.body) - TAG_BYTES
            assert padded_size(plain) == plain, (event.seq, plain)
        short = {len(e.body) for e in sealed if len(e.body) <= 256 + TAG_BYTES}
        assert len(short) == 1  # every short event looks the same
    finally:
        proxy.close()
