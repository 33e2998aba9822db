"""The processors' derived state: job records, capabilities, results and the search index.

Everything here is a fold of the log behind a cursor of its own (``proc_state.folded_upto``;
only the record types it needs are opened), so it is the same on every full replica that holds
the same events — a result computed on the home server is indexed on the laptop from the
event alone — and it can be dropped and rebuilt at any time (:meth:`Derived.rebuild`).

Tables (``processors/migrations``): ``proc_caps`` (latest ``replica.caps`` per author),
``proc_records`` (claims, results, failures as the claim rule reads them), ``proc_results``
(the result that counts per job key, with provenance: author, lamport, time), ``proc_sources``
(the text each document offers, by hash) and ``proc_indexed`` (which embedding result of each
document the search index holds). The index itself (``processors.search_index``: FTS5 and the
vectors in the same database, the usearch graph as a cache file under ``HOME/index``) is
written in the same transaction as the cursor; the graph is saved after and re-made from the
stored vectors when it lags (the index checks its own generation).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgpack

from engine import files
from engine.engine import Engine, Record
from eventlog.envelope import decode_event
from eventlog.errors import ShoalError
from eventlog.migrate import migrate
from eventlog.store import E_RAW_COLUMNS
from processors.catalog import FileSource, Source, TextSource, text_hash
from processors.jobs import (
    JOB_TYPES,
    T_CAPS,
    T_RESULT,
    Caps,
    Claim,
    Failure,
    JobKey,
    JobRecord,
    Result,
    parse_caps,
    parse_job_record,
)

if TYPE_CHECKING:
    from processors.search_index import SearchIndex

log = logging.getLogger("shoal.processors")

KEY_FIELDS: Final = frozenset({"t", "processor", "version", "doc", "input"})
EMBED: Final = "embed"
EXTRACT: Final = "extract"
BATCH: Final = 1000
MAX_DIM: Final = 8192
FOLDED_TYPES: Final = (T_CAPS, *sorted(JOB_TYPES))
_TYPES_SQL: Final = ", ".join(f"'{t}'" for t in FOLDED_TYPES)


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A result that counts, with its provenance."""

    key: JobKey
    author: bytes
    lamport: int
    time_ms: int
    output: dict[str, Any]


def decode_vectors(output: dict[str, Any]) -> tuple[list[str], Any, str, int]:
    """``(chunks, float32 matrix, embedder, dim)`` of an embed result's output fields."""
    import numpy as np

    chunks = output.get("chunks")
    raw = output.get("vectors")
    dim = output.get("dim")
    embedder = output.get("embedder")
    if not (
        isinstance(chunks, list)
        and all(isinstance(c, str) for c in chunks)
        and isinstance(raw, bytes)
        and isinstance(dim, int)
        and dim > 0
        and isinstance(embedder, str)
        and len(raw) == 2 * dim * len(chunks)
    ):
        raise ShoalError("embed result: malformed chunks/vectors")
    vectors = np.frombuffer(raw, dtype="<f2").astype(np.float32).reshape(len(chunks), dim)
    return chunks, vectors, embedder, dim


def _body_is_its_text(entry: files.FileEntry) -> bool:
    """A text file is its own text (the body, which merges), except a format extraction reads
    better (HTML: markup out, structure kept as markdown), which goes to ``extract``."""
    from processors.extract import DOCLING_FORMATS

    mime = entry.mime.split(";")[0].strip()
    return entry.text and (mime == "text/markdown" or mime not in DOCLING_FORMATS)


class Derived:
    """The processors' tables of one replica, kept up to date with :meth:`fold`."""

    def __init__(self, engine: Engine, index_dir: Path | None = None) -> None:
        self.engine = engine
        self.store = engine.store
        self.index_dir = index_dir
        self._index: SearchIndex | None = None
        migrate(self.store.conn, "processors", "processors.migrations")

    # --- the fold -----------------------------------------------------------------------------

    def _state(self, key: str) -> int:
        row = self.store.query_one("SELECT value FROM proc_state WHERE key = ?", (key,))
        return int(row[0]) if row else 0

    def _set_state(self, key: str, value: int) -> None:
        self.store.conn.execute("UPDATE proc_state SET value = ? WHERE key = ?", (value, key))

    def fold(self) -> int:
        """Fold the records stored since the cursor; returns how many were read.

        If the engine rebuilt its state since we last folded (a device removal revoked events
        we may have folded), everything is folded again from the start.
        """
        rebuilds = self.engine.rebuilds()
        if rebuilds != self._state("engine_rebuilds"):
            with self.store.atomic():
                self.store.conn.execute(
                    "INSERT OR REPLACE INTO proc_state VALUES ('engine_rebuilds', ?)", (rebuilds,)
                )
            return self.rebuild()
        done = 0
        while True:
            upto = self._state("folded_upto")
            end = self.store.last_rowid()
            if end <= upto:
                break
            records = self._records(upto, end)
            self._open_index(records)
            with self.store.atomic():
                for record in records:
                    self._apply(record)
                self._drop_deleted_files()
                last = records[-1].rowid if len(records) == BATCH else end
                self._set_state("folded_upto", last)
            done += len(records)
        if done and self._index is not None:
            self._index.save()
        return done

    def _records(self, after: int, upto: int) -> list[Record]:
        """Our record types after ``after``, opened; the engine's index says which are ours.

        Reading only these (not every event, as ``Engine.records_after`` would) keeps the
        fold off the sync path's cost: a replica that receives 100k document edits opens
        none of them a second time.
        """
        rows = self.store.query_all(
            f"SELECT e.rowid, {E_RAW_COLUMNS} FROM event_index i JOIN events e ON e.rowid = i.rowid"
            f" WHERE i.rowid > ? AND i.rowid <= ? AND i.type IN ({_TYPES_SQL})"
            " ORDER BY i.rowid LIMIT ?",
            (after, upto, BATCH),
        )
        records = []
        for rowid, *where in rows:
            event = decode_event(self.store.raw(*where))
            try:
                payload = self.engine.keyring.open_payload(event)
            except ShoalError:
                continue
            records.append(Record(rowid, event, payload))
        return records

    def _apply(self, record: Record) -> None:
        payload, event = record.payload, record.event
        if payload is None:
            return
        kind = payload.get("t")
        try:
            if kind == T_CAPS:
                self._apply_caps(parse_caps(payload, event.author, event.lamport), event.time_ms)
            elif kind in JOB_TYPES:
                job = parse_job_record(payload, event.author, event.lamport, event.time_ms)
                self._apply_job(record.rowid, job, payload)
        except ShoalError as exc:
            log.warning("skipping malformed %s at rowid %d: %s", kind, record.rowid, exc)

    def _apply_caps(self, caps: Caps, time_ms: int) -> None:
        self.store.conn.execute(
            "INSERT INTO proc_caps VALUES (?, ?, ?, ?) ON CONFLICT (author) DO UPDATE SET"
            " lamport = excluded.lamport, time_ms = excluded.time_ms, caps = excluded.caps"
            " WHERE excluded.lamport > proc_caps.lamport"
            " OR (excluded.lamport = proc_caps.lamport AND excluded.caps > proc_caps.caps)",
            (caps.author, caps.lamport, time_ms, json.dumps(sorted(caps.caps))),
        )

    def _apply_job(self, rowid: int, job: JobRecord, payload: dict[str, Any]) -> None:
        k = job.key
        lease = job.lease_until_ms if isinstance(job, Claim) else None
        reason = job.reason if isinstance(job, Failure) else None
        permanent = int(job.permanent) if isinstance(job, Failure) else None
        self.store.conn.execute(
            "INSERT OR REPLACE INTO proc_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rowid,
                payload["t"],
                k.processor,
                k.version,
                k.doc,
                k.input,
                job.author,
                job.lamport,
                job.time_ms,
                lease,
                reason,
                permanent,
            ),
        )
        if not isinstance(job, Result):
            return
        output = {name: value for name, value in payload.items() if name not in KEY_FIELDS}
        existing = self.store.query_one(
            "SELECT lamport, author FROM proc_results"
            " WHERE processor = ? AND version = ? AND doc = ? AND input = ?",
            (k.processor, k.version, k.doc, k.input),
        )
        if existing is not None and (existing[0], bytes(existing[1])) <= (job.lamport, job.author):
            return  # an earlier result of the same job already counts
        self.store.conn.execute(
            "INSERT OR REPLACE INTO proc_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                k.processor,
                k.version,
                k.doc,
                k.input,
                job.author,
                job.lamport,
                job.time_ms,
                rowid,
                msgpack.packb(output, use_bin_type=True),
            ),
        )
        if k.processor == EMBED:
            self._index_result(StoredResult(k, job.author, job.lamport, job.time_ms, output))

    # --- the search index ---------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        row = self.store.query_one("SELECT value FROM proc_meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def index(self, *, create_dim: int | None = None) -> SearchIndex | None:
        """The search index, opened on first use (None until an embedding result exists)."""
        if self._index is not None or self.index_dir is None:
            return self._index
        dim = self._meta("index_dim")
        if dim is None and create_dim is None:
            return None
        from processors.search_index import SearchIndex

        self.index_dir.mkdir(parents=True, exist_ok=True)
        self._index = SearchIndex(self.store.conn, self.index_dir, int(dim or create_dim or 0))
        return self._index

    def _open_index(self, records: list[Record]) -> None:
        """Open the index before the fold's transaction (creating its tables commits)."""
        if self._index is not None or self.index_dir is None:
            return
        for record in records:
            payload = record.payload or {}
            dim = payload.get("dim")
            embed = payload.get("t") == T_RESULT and payload.get("processor") == EMBED
            if embed and isinstance(dim, int) and 0 < dim <= MAX_DIM:
                self.index(create_dim=dim)
                return
        self.index()

    def index_embedder(self) -> tuple[str, int] | None:
        """The embedder whose vectors the index holds, and their dimension."""
        name, dim = self._meta("index_embedder"), self._meta("index_dim")
        return None if name is None or dim is None else (name, int(dim))

    def _index_result(self, result: StoredResult) -> None:
        if self.index_dir is None:
            return
        try:
            chunks, vectors, embedder, dim = decode_vectors(result.output)
        except ShoalError as exc:
            log.warning("embed result for %s not indexed: %s", result.key.short(), exc)
            return
        row = self.store.query_one(
            "SELECT lamport, author FROM proc_indexed WHERE doc = ?", (result.key.doc,)
        )
        if row is not None and (row[0], bytes(row[1])) > (result.lamport, result.author):
            return  # the index holds a newer embedding of this document
        if self.index_embedder() is None:
            self.store.conn.execute(
                "INSERT INTO proc_meta VALUES ('index_embedder', ?), ('index_dim', ?)",
                (embedder, str(dim)),
            )
        index = self.index(create_dim=dim)
        assert index is not None
        same = self.index_embedder() == (embedder, dim)
        index.upsert(result.key.doc, chunks, vectors if same else None)
        k = result.key
        self.store.conn.execute(
            "INSERT OR REPLACE INTO proc_indexed VALUES (?, ?, ?, ?, ?)",
            (k.doc, k.version, k.input, result.lamport, result.author),
        )

    def _drop_deleted_files(self) -> None:
        rows = self.store.query_all(
            "SELECT i.doc FROM proc_indexed i JOIN files f ON f.doc = i.doc WHERE f.deleted"
        )
        for (doc,) in rows:
            index = self.index()
            if index is not None:
                index.remove(bytes(doc))
            self.store.conn.execute("DELETE FROM proc_indexed WHERE doc = ?", (doc,))

    # --- rebuilding ---------------------------------------------------------------------------

    def rebuild(self) -> int:
        """Drop every processor table and the index, and fold the whole log again."""
        index = self.index()
        with self.store.atomic():
            for table in (
                "proc_caps",
                "proc_records",
                "proc_results",
                "proc_indexed",
                "proc_sources",
            ):
                self.store.conn.execute(f"DELETE FROM {table}")
            self.store.conn.execute("DELETE FROM proc_meta")
            self.store.conn.execute(
                "UPDATE proc_state SET value = 0 WHERE key != 'engine_rebuilds'"
            )
            if index is not None:
                index.clear()
        if index is not None:
            index.save()
        self._index = None
        return self.fold()

    # --- reading ------------------------------------------------------------------------------

    def caps(self) -> dict[bytes, frozenset[str]]:
        rows = self.store.query_all("SELECT author, caps FROM proc_caps")
        return {bytes(a): frozenset(json.loads(c)) for a, c in rows}

    def records(self, keys: Iterable[JobKey] | None = None) -> dict[JobKey, list[JobRecord]]:
        """Job records grouped by key (all of them, or those of ``keys``)."""
        wanted = None if keys is None else set(keys)
        grouped: dict[JobKey, list[JobRecord]] = defaultdict(list)
        rows = self.store.query_all(
            "SELECT type, processor, version, doc, input, author, lamport, time_ms,"
            " lease_until_ms, reason, permanent FROM proc_records"
        )
        for typ, proc, version, doc, inp, raw_author, lamport, time_ms, lease, reason, perm in rows:
            key = JobKey(proc, version, bytes(doc), bytes(inp))
            if wanted is not None and key not in wanted:
                continue
            author = bytes(raw_author)
            record: JobRecord
            if typ == T_RESULT:
                record = Result(key, author, lamport, time_ms)
            elif typ == "job.claim":
                record = Claim(key, author, lamport, time_ms, lease)
            else:
                record = Failure(key, author, lamport, time_ms, reason or "", bool(perm))
            grouped[key].append(record)
        return grouped

    def job_records(self, key: JobKey) -> list[JobRecord]:
        return self.records([key]).get(key, [])

    def result(self, key: JobKey) -> StoredResult | None:
        row = self.store.query_one(
            "SELECT author, lamport, time_ms, output FROM proc_results"
            " WHERE processor = ? AND version = ? AND doc = ? AND input = ?",
            (key.processor, key.version, key.doc, key.input),
        )
        if row is None:
            return None
        output = msgpack.unpackb(row[3], raw=False)
        return StoredResult(key, bytes(row[0]), row[1], row[2], output)

    def latest_result(self, doc: bytes, processor: str) -> StoredResult | None:
        """The newest result of ``processor`` for ``doc`` (whatever input it was made from)."""
        row = self.store.query_one(
            "SELECT version, input FROM proc_results WHERE doc = ? AND processor = ?"
            " ORDER BY lamport DESC, author DESC LIMIT 1",
            (doc, processor),
        )
        if row is None:
            return None
        return self.result(JobKey(processor, row[0], doc, bytes(row[1])))

    # --- sources: what each document offers to processors ---------------------------------------

    def sources(self, extract_version: str | None) -> list[Source]:
        """Every current source: files to extract, and texts (note bodies, extracted text).

        Text hashes are cached in ``proc_sources`` by what they were computed from, so a
        pass over a large vault reads only the documents that changed.
        """
        found: list[Source] = []
        entries = {e.doc_id: e for e in files.file_entries(self.store)}
        for entry in entries.values():
            if entry.deleted or _body_is_its_text(entry) or entry.hash is None:
                continue
            file_source = FileSource(entry.doc_id, entry.path, entry.mime, entry.hash)
            found.append(file_source)
            if extract_version is None:
                continue
            text = self._extracted_source(file_source, extract_version)
            if text is not None:
                found.append(text)
        for raw_doc, title, events in self.store.query_all("SELECT doc, title, events FROM docs"):
            doc = bytes(raw_doc)
            known = entries.get(doc)
            if known is not None and (known.deleted or not _body_is_its_text(known)):
                continue
            name = known.path if known is not None else title
            source = self._cached_source(doc, f"b{events}", name, "body")
            if source is not None:
                found.append(source)
        return found

    def _extracted_source(self, source: FileSource, version: str) -> TextSource | None:
        from processors.catalog import input_hash

        key = JobKey(EXTRACT, version, source.doc, input_hash(EXTRACT, source.hash))
        row = self.store.query_one(
            "SELECT rowid FROM proc_results WHERE processor = ? AND version = ? AND doc = ?"
            " AND input = ?",
            (key.processor, key.version, key.doc, key.input),
        )
        if row is None:
            return None
        return self._cached_source(source.doc, f"x{row[0]}", source.path, "extract", key)

    def _cached_source(
        self, doc: bytes, mark: str, title: str, origin: str, key: JobKey | None = None
    ) -> TextSource | None:
        row = self.store.query_one(
            "SELECT mark, text_hash, chars FROM proc_sources WHERE doc = ?", (doc,)
        )
        if row is not None and row[0] == mark:
            return TextSource(doc, title, origin, bytes(row[1]), key) if row[2] else None
        text = self.source_text(TextSource(doc, title, origin, b"", key))
        digest = text_hash(text)
        with self.store.atomic():
            self.store.conn.execute(
                "INSERT OR REPLACE INTO proc_sources VALUES (?, ?, ?, ?, ?, ?)",
                (doc, mark, title, origin, digest, len(text.strip())),
            )
        return TextSource(doc, title, origin, digest, key) if text.strip() else None

    def source_text(self, source: TextSource) -> str:
        """The text a text source offers right now (read on the event loop, not in a worker)."""
        if source.origin == "extract":
            key = source.basis
            result = self.result(key) if key is not None else None
            text = result.output.get("text") if result is not None else None
            return text if isinstance(text, str) else ""
        body = str(self.engine.open(source.doc).body)
        return f"{source.title}\n\n{body}" if body.strip() else ""
