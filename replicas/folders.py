"""Folders on disk and the vault's files: ingest (watch) and two-way materialization (mirror).

A *watched* folder is a source: what changes in it becomes new versions in the vault. A
*mirrored* folder is also a destination: the vault's files are written into it, and edits
made there come back. The folder's last known state (size, mtime, content hash and, for
text, the document state the file matches) is kept per path in ``folder_files``, so:

- a startup scan re-reads only files whose size or mtime changed while shoal was not running,
  and a file that vanished becomes a tombstone; a vanished file whose content reappears under
  another name in the same scan is a rename;
- an edit of a text file is merged as edits against the state the file was last written
  from, so a concurrent edit made elsewhere survives (no conflict copies);
- the mirror never overwrites a local change it has not ingested: it ingests first, and
  writes through a temporary file and an atomic rename, so a reader never sees half a file.

Every problem with one path (unreadable, vanished, a symlink, a name the vault cannot hold,
a path that would climb out of the folder) is reported in one line and skipped.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from engine import file_content, files
from engine.ingest import FileWriter, Put
from eventlog.errors import NotFoundError, ShoalError
from eventlog.migrate import migrate
from replicas.atomic_write import TEMP_PREFIX, write_file

if TYPE_CHECKING:
    from pathspec import PathSpec

    from replicas.vault import Replica

IGNORE_FILE: Final = ".shoalignore"
MARKER: Final = ".shoalfolder"
"""A directory made in a folder when it is bound: while it is missing, the folder is taken as
absent (its drive unmounted, leaving an empty mount point), not as emptied."""
DEFAULT_IGNORES: Final = (
    f"{TEMP_PREFIX}*",
    f"{MARKER}/",
    "*.tmp",
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.swp",
    "*.swx",
    "*~",
    ".#*",
    "~$*",
    ".DS_Store",
    "Thumbs.db",
    ".git/",
    ".stfolder/",
    ".stversions/",
)
"""Temporary and partial files of editors, browsers and sync tools, never worth syncing."""
MAX_NAME_BYTES: Final = 255
MAX_JUST_WRITTEN: Final = 100_000
MAX_IGNORE_ANSWERS: Final = 100_000
BATCH_FILES: Final = 100
BATCH_BYTES: Final = 4 * 1024 * 1024
"""A commit per this many files or bytes: the daemon on the home sends what is committed, so
a big change starts travelling ~0.1 s after it starts being read (W4a: the relay held A's
log 1 s after A had read it with 500 files / 64 MiB, 0.13 s after with these)."""
STREAM_BYTES: Final = 8 * 1024 * 1024
"""A file this big is ingested outside any batch transaction: its chunks commit (and travel)
as they are cut."""

Report = Callable[[str], None]
_RECORD: Final = "path, doc, size, mtime_ns, hash, base"


@dataclass
class Seen:
    doc_id: bytes
    size: int
    mtime_ns: int
    content_hash: bytes
    base: bytes | None


@dataclass
class ScanResult:
    added: int = 0
    changed: int = 0
    deleted: int = 0
    renamed: int = 0
    unchanged: int = 0
    skipped: int = 0
    written: int = 0
    new_bytes: int = 0
    problems: list[str] = field(default_factory=list)


def batches(
    found: list[tuple[Path, os.stat_result]],
) -> Iterator[tuple[list[tuple[Path, os.stat_result]], bool]]:
    """Files in commit-sized groups of ``BATCH_FILES`` files or ``BATCH_BYTES`` bytes, each
    with whether it is one transaction: a file of ``STREAM_BYTES`` or more comes alone and
    outside any (see ``Folder.ingest_all``)."""
    batch: list[tuple[Path, os.stat_result]] = []
    size = 0
    for item in found:
        if item[1].st_size >= STREAM_BYTES:
            if batch:
                yield batch, True
                batch, size = [], 0
            yield [item], False
            continue
        batch.append(item)
        size += item[1].st_size
        if len(batch) >= BATCH_FILES or size >= BATCH_BYTES:
            yield batch, True
            batch, size = [], 0
    if batch:
        yield batch, True


def _ignore_spec(root: Path) -> PathSpec:  # type: ignore[type-arg]
    from pathspec import GitIgnoreSpec

    lines = list(DEFAULT_IGNORES)
    try:
        lines += (root / IGNORE_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise ShoalError(f"{root / IGNORE_FILE}: cannot read ignore patterns ({exc})") from exc
    return GitIgnoreSpec.from_lines(lines)


class Folder:
    """One folder bound to the vault, as a watched source or a two-way mirror."""

    def __init__(
        self,
        replica: Replica,
        root: Path,
        *,
        mirror: bool = False,
        report: Report | None = None,
        marked: bool = True,
    ) -> None:
        """``marked``: the folder is bound (watched, mirrored or scanned whole), so it gets its
        ``MARKER``; ``shoal add FILE`` only reads one file of it and leaves no trace there."""
        if not root.is_dir():
            raise NotFoundError(f"{root}: not a directory")
        self.replica = replica
        self.root = root.resolve()
        self.key = str(self.root)
        self._prefix = self.key.rstrip("/") + "/"
        self.mirror = mirror
        self.report: Report = report or (lambda line: None)
        self.writer = FileWriter(replica.engine)
        self.store = replica.store
        migrate(self.store.conn, "folders", "replicas.migrations")
        self.ignore = _ignore_spec(self.root)
        self._ignored: dict[str, bool] = {}
        self.incomplete: set[bytes] = set()
        """Files the mirror could not write yet because some chunks have not arrived."""
        self._just_written: dict[Path, tuple[int, int]] = {}
        """Files the mirror wrote and their ``(size, mtime_ns)``: the watcher's echo of each is
        dropped without touching the database. Any later edit changes the pair, so it is
        still seen."""
        self._versions: dict[int, files.FileVersion] = {}
        self._where: dict[bytes, files.Location] = {}
        """What ``_prefetch`` found for the batch of mirror writes in progress."""
        self._owners: dict[str, files.FileEntry] = {}
        self._by_doc: dict[bytes, tuple[str, Seen]] = {}
        self._at_path: dict[str, Seen] = {}
        self._opened = file_content.OpenedRecords(replica.engine)
        """The file events last opened for chunks: a ``file.batch`` holds many files."""
        self._resolved: dict[str, bool] = {}
        """Vault directories (``"a/b"``, ``""`` for the root) checked for ``local_path`` in the
        current batch of mirror writes: whether they resolve inside the folder (cleared when
        a batch starts; a resolve per file, and then comparing paths, was a tenth of the
        mirror's time)."""
        self.store.rollback_hooks.append(self._just_written.clear)
        self.marked = marked and self._mark()

    def _mark(self) -> bool:
        """Make sure the folder has its marker; False if it cannot have one (read-only).

        A folder bound before markers existed gets one if it holds anything. One the vault
        has files of but that is empty and unmarked is refused: that is what an unmounted
        drive looks like, and a scan would take every file as deleted (Syncthing's
        ``.stfolder`` rule)."""
        marker = self.root / MARKER
        if marker.is_dir():
            return True
        bound = self.store.query_one(
            "SELECT 1 FROM folder_files WHERE root = ? LIMIT 1", (self.key,)
        )
        if bound is not None and not any(self.root.iterdir()):
            raise NotFoundError(
                f"{self.root}: empty, and its marker {MARKER} is missing (is its drive"
                " mounted?); nothing was taken as deleted. If you emptied it on purpose,"
                f" run `mkdir {marker}` and start again"
            )
        try:
            marker.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            self.report(
                f"{self.root}: cannot make its marker {MARKER} ({exc.strerror or exc}): an"
                " unmounted drive would look like a folder whose files were all deleted"
            )
            return False
        return True

    def present(self) -> bool:
        """The folder is there (not removed, and its drive mounted: its marker is in it)."""
        return (self.root / MARKER).is_dir() if self.marked else self.root.is_dir()

    # --- bookkeeping --------------------------------------------------------------------------

    def _seen(self, path: str) -> Seen | None:
        row = self.store.query_one(
            "SELECT doc, size, mtime_ns, hash, base FROM folder_files WHERE root = ? AND path = ?",
            (self.key, path),
        )
        if row is None:
            return None
        base = None if row[4] is None else bytes(row[4])
        return Seen(bytes(row[0]), int(row[1]), int(row[2]), bytes(row[3]), base)

    def _all_seen(self) -> dict[str, Seen]:
        rows = self.store.query_all(
            f"SELECT {_RECORD} FROM folder_files WHERE root = ?",
            (self.key,),
        )
        return dict(_record_row(row) for row in rows)

    def _remember(self, path: str, seen: Seen) -> None:
        self.store.conn.execute(
            "INSERT OR REPLACE INTO folder_files VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.key, path, seen.doc_id, seen.size, seen.mtime_ns, seen.content_hash, seen.base),
        )

    def _forget(self, path: str) -> None:
        self.store.conn.execute(
            "DELETE FROM folder_files WHERE root = ? AND path = ?", (self.key, path)
        )

    # --- paths --------------------------------------------------------------------------------

    def vault_path(self, local: Path) -> str | None:
        """The vault path of a local file, or None (reported) if it cannot be one."""
        try:
            rel = self._relative(local)
        except ValueError:
            self.report(f"skipped {local}: outside {self.root}")
            return None
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            self.report(f"skipped {local}: the name is not valid UTF-8")
            return None
        if unicodedata.normalize("NFC", rel) != rel:
            self.report(f"skipped {local}: the name is not in Unicode NFC form")
            return None
        try:
            return files.check_path(rel)
        except files.UnsafePathError as exc:
            self.report(f"skipped {local}: {exc}")
            return None

    def _relative(self, local: Path) -> str:
        """``local.relative_to(self.root).as_posix()`` (ValueError if outside), by string
        prefix when it can be: pathlib's took ~17 us, asked twice for every file found."""
        text = str(local)
        if text.startswith(self._prefix):
            return text[len(self._prefix) :]
        return local.relative_to(self.root).as_posix()

    def vault_paths(self, found: list[Path], result: ScanResult) -> dict[Path, str]:
        """Each file's vault path, worked out (and a bad name reported and counted) once."""
        paths = {}
        for local in found:
            path = self.vault_path(local)
            if path is None:
                result.skipped += 1
            else:
                paths[local] = path
        return paths

    def local_path(self, path: str) -> Path | None:
        """Where a vault path lives in this folder; None (reported) if it cannot live here."""
        try:
            files.check_path(path)
        except files.UnsafePathError as exc:
            self.report(f"not written: {exc}")
            return None
        if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in path.split("/")):
            self.report(f"not written {path}: a name is longer than this system allows")
            return None
        directory = path.rpartition("/")[0]
        inside = self._resolved.get(directory)
        if inside is None:
            parent = (self.root / directory).resolve()
            inside = self._resolved[directory] = parent == self.root or self.root in parent.parents
        if not inside:
            self.report(f"not written {path}: a directory on its way is a link out of the folder")
            return None
        return self.root / path

    def ignored(self, path: str, is_dir: bool = False) -> bool:
        """Matched by the folder's ignore patterns (remembered: ~30 us a path, and a found
        file is asked about where it is found and again where it is read)."""
        key = path + "/" if is_dir else path
        known = self._ignored.get(key)
        if known is None:
            if len(self._ignored) >= MAX_IGNORE_ANSWERS:
                self._ignored.clear()
            known = self._ignored[key] = bool(self.ignore.match_file(key))
        return known

    def walk(self, start: Path | None = None) -> Iterable[tuple[Path, os.stat_result]]:
        """Every regular file under the root or ``start`` (no symlinks followed: no loops)."""
        stack = [start or self.root]
        while stack:
            directory = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError as exc:
                self.report(f"skipped {directory}: {exc.strerror or exc}")
                continue
            for entry in entries:
                local = Path(entry.path)
                rel = self._relative(local)
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    self.report(f"skipped {local}: {exc.strerror or exc}")
                    continue
                if stat.S_ISDIR(info.st_mode):
                    if not self.ignored(rel, is_dir=True):
                        stack.append(local)
                elif stat.S_ISREG(info.st_mode):
                    if not self.ignored(rel):
                        yield local, info
                elif stat.S_ISLNK(info.st_mode):
                    self.report(f"skipped {local}: symbolic links are not followed")

    # --- disk -> vault ------------------------------------------------------------------------

    def ingest(
        self,
        local: Path,
        result: ScanResult,
        path: str | None = None,
        records: dict[str, Seen] | None = None,
    ) -> Put | None:
        """Bring one file's current content into the vault if it changed since last seen.

        ``path``: its vault path, if the caller has it (``vault_paths``); ``records``: what
        the folder knew of it, if the caller read that already (a path absent from it had no
        record).
        """
        path = path or self.vault_path(local)
        if path is None:
            result.skipped += 1
            return None
        if self.ignored(path):
            return None
        try:
            before = local.lstat()
        except FileNotFoundError:
            return None  # gone before we got to it: the deletion is handled by the scan
        except OSError as exc:
            self._problem(result, f"skipped {local}: {exc.strerror or exc}")
            return None
        if not stat.S_ISREG(before.st_mode):
            return None
        seen = self._seen(path) if records is None else records.get(path)
        if seen and seen.size == before.st_size and seen.mtime_ns == before.st_mtime_ns:
            result.unchanged += 1
            return None

        def still() -> None:  # raises FileNotFoundError if it vanished
            after = local.lstat()
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise _ChangedWhileReadError

        try:
            with open(local, "rb") as stream:
                put = self.writer.put(
                    path,
                    stream,
                    mtime_ms=before.st_mtime_ns // 1_000_000,
                    doc_id=seen.doc_id if seen else None,
                    base_state=seen.base if seen else None,
                    still=still,
                    edited=seen.content_hash if seen else None,
                )
        except FileNotFoundError:
            self._problem(result, f"skipped {local}: it vanished while being read")
            return None
        except _ChangedWhileReadError:
            self._problem(result, f"skipped {local}: it changed while being read (next pass)")
            return None
        except OSError as exc:
            self._problem(result, f"skipped {local}: {exc.strerror or exc}")
            return None
        with self.store.atomic():  # the batch's transaction; its own for a file ingested alone
            self._remember(
                path,
                Seen(
                    put.doc_id, before.st_size, before.st_mtime_ns, put.content_hash, put.base_state
                ),
            )
        if put.changed:
            if seen is None:
                result.added += 1
            else:
                result.changed += 1
            result.new_bytes += put.new_bytes
        else:
            result.unchanged += 1
        return put

    def ingest_all(
        self,
        found: list[tuple[Path, os.stat_result]],
        result: ScanResult,
        progress: Callable[[int, int], None] | None = None,
        total: int = 0,
        paths: dict[Path, str] | None = None,
        records: dict[str, Seen] | None = None,
    ) -> list[Put]:
        """Ingest files with one commit per batch (``batches``), so that a daemon storing
        received events on this home (another process) never waits for the write lock for a
        whole big change. ``paths`` and ``records``: see ``ingest``.

        A file of ``STREAM_BYTES`` or more is ingested outside any transaction: each of its
        chunk events commits as it is cut, so the daemon sends the start of a big file while
        the rest is still being read, instead of the whole file after it.
        """
        puts, done = [], 0
        for batch, together in batches(found):
            with self.writer.batch() if together else contextlib.nullcontext():
                for local, info in batch:
                    path = paths.get(local) if paths else None
                    put = self.ingest(local, result, path, records)
                    if put is not None:
                        puts.append(put)
                    done += info.st_size
                    if progress:
                        progress(done, total)
        return puts

    def scan(self, progress: Callable[[int, int], None] | None = None) -> ScanResult:
        """Reconcile the whole folder with the vault (at start, and for new directories)."""
        result = ScanResult()
        if not self.present():
            self._problem(result, self.gone_line())
            return result
        known = self._all_seen()
        present = list(self.walk())
        paths = self.vault_paths([local for local, _ in present], result)
        gone = dict(known)
        fresh: list[tuple[Path, os.stat_result]] = []
        for local, info in present:
            if (path := paths.get(local)) is not None:
                gone.pop(path, None)
                if path not in known:
                    fresh.append((local, info))
        renames = self._match_renames(gone, fresh, result)
        found = [item for item in present if item[0] in paths and item[0] not in renames]
        total = sum(info.st_size for _, info in found)
        self.ingest_all(found, result, progress, total, paths, known)
        with self.writer.batch():
            for path, seen in gone.items():
                self._deleted(path, seen, result)
        if self.mirror:
            result.written += self.materialize(None)
        return result

    def _match_renames(
        self, gone: dict[str, Seen], fresh: list[tuple[Path, os.stat_result]], result: ScanResult
    ) -> set[Path]:
        """Files that vanished and reappeared elsewhere with the same content: renames.

        Only candidates of equal size are hashed, so a scan without renames reads nothing
        extra.
        """
        if not gone or not fresh:
            return set()
        by_size: dict[int, list[tuple[str, Seen]]] = {}
        for path, seen in gone.items():
            by_size.setdefault(seen.size, []).append((path, seen))
        renamed: set[Path] = set()
        for local, info in fresh:
            candidates = by_size.get(info.st_size)
            if not candidates:
                continue
            try:
                content_hash = self._hash_file(local)
            except OSError:
                continue
            for old_path, seen in candidates:
                if seen.content_hash != content_hash:
                    continue
                new_path = self.vault_path(local)
                if new_path is None:
                    break
                with self.store.atomic():
                    self.writer.rename(
                        seen.doc_id, new_path, mtime_ms=info.st_mtime_ns // 1_000_000
                    )
                    self._forget(old_path)
                    self._remember(
                        new_path,
                        Seen(seen.doc_id, info.st_size, info.st_mtime_ns, content_hash, seen.base),
                    )
                candidates.remove((old_path, seen))
                del gone[old_path]
                renamed.add(local)
                result.renamed += 1
                break
        return renamed

    def _hash_file(self, local: Path) -> bytes:
        hasher = self.writer.keys.content_hasher()
        with open(local, "rb") as stream:
            while block := stream.read(1 << 20):
                hasher.update(block)
        return hasher.digest()

    def _deleted(self, path: str, seen: Seen, result: ScanResult) -> None:
        entry = files.file_entry(self.store, seen.doc_id)
        self._forget(path)
        if entry is not None and not entry.deleted and entry.path == path:
            self.writer.delete(seen.doc_id, seen.content_hash)
            result.deleted += 1

    def changed_paths(self, changes: Iterable[tuple[str, Path]]) -> ScanResult:
        """Handle a watcher's batch: ("added"|"modified"|"deleted", path) pairs.

        Only what the batch names is looked at: a new directory is walked (files written
        right after a ``mkdir`` can precede the watch on it), a vanished path becomes a
        deletion of what we knew there (a whole directory's worth for a directory), and a
        vanished file whose content reappears in the same batch is a rename.
        """
        changes = list(changes)
        result = ScanResult()
        if not self.present():
            self._problem(result, self.gone_line())
            return result  # the deletions it reports are the folder's, not the files'
        if any(local.name == IGNORE_FILE for _, local in changes):
            self.ignore = _ignore_spec(self.root)
            self._ignored.clear()
        present: dict[Path, os.stat_result] = {}
        gone: dict[str, Seen] = {}
        for _, local in changes:
            if local.name.startswith(TEMP_PREFIX):
                continue  # our own mirror writes, renamed into place a moment later
            try:
                info = local.lstat()
            except FileNotFoundError:
                gone.update(self._seen_at_or_under(local))
                continue
            except OSError as exc:
                self._problem(result, f"skipped {local}: {exc.strerror or exc}")
                continue
            if stat.S_ISDIR(info.st_mode):
                rel = local.relative_to(self.root).as_posix() if local != self.root else ""
                if local == self.root or not self.ignored(rel, is_dir=True):
                    written = self._just_written  # a mirror's new directory: files it wrote
                    present.update(
                        (found, found_info)
                        for found, found_info in self.walk(local)
                        if written.get(found) != (found_info.st_size, found_info.st_mtime_ns)
                    )
            elif stat.S_ISREG(info.st_mode):
                if self._just_written.pop(local, None) == (info.st_size, info.st_mtime_ns):
                    continue  # the echo of our own mirror write, unchanged since
                present[local] = info
        paths = self.vault_paths(list(present), result)
        for known_path in paths.values():
            gone.pop(known_path, None)
        with self.store.reading():  # one snapshot for the batch's lookups (``Database.reading``)
            records = {path: seen for path in paths.values() if (seen := self._seen(path))}
        fresh = [
            (local, info)
            for local, info in present.items()
            if local in paths and paths[local] not in records
        ]
        renamed = self._match_renames(gone, fresh, result)
        todo = [
            (local, info)
            for local, info in present.items()
            if local in paths and local not in renamed
        ]
        puts = self.ingest_all(todo, result, paths=paths, records=records)
        touched = [put.doc_id for put in puts if put.changed]
        if gone:
            with self.writer.batch():
                for path, seen in gone.items():
                    self._deleted(path, seen, result)
        if self.mirror and touched:  # a text edit merged with others: write the merge back
            result.written += self.materialize(touched)
        return result

    def _seen_at_or_under(self, local: Path) -> dict[str, Seen]:
        """What we knew at a vanished path: one file, or everything under a directory."""
        try:
            rel = local.relative_to(self.root).as_posix()
        except ValueError:
            return {}
        found = {}
        seen = self._seen(rel)
        if seen is not None:
            found[rel] = seen
        rows = self.store.query_all(  # paths under rel/ sort between "rel/" and "rel0"
            "SELECT path FROM folder_files WHERE root = ? AND path > ? AND path < ?",
            (self.key, rel + "/", rel + "0"),
        )
        for (path,) in rows:
            seen = self._seen(str(path))
            if seen is not None:
                found[str(path)] = seen
        return found

    # --- vault -> disk (mirror) ---------------------------------------------------------------

    def materialize(self, doc_ids: Iterable[bytes] | None) -> int:
        """Write the vault's current files into the folder; returns how many were written."""
        store = self.store
        if not self.present():  # an empty mount point is not the folder: write nothing there
            self.report(self.gone_line())
            return 0
        with store.reading():
            if doc_ids is None:
                entries = files.file_entries(store, deleted=True)
            else:
                entries = files.file_entries_of(store, doc_ids)
        # In log order: the files of one ``file.batch`` come together, so its event is
        # opened once for all of them (``file_content.OpenedRecords``), not once a file.
        entries.sort(key=lambda entry: entry.rowid)
        written = 0
        for start in range(0, len(entries), BATCH_FILES):
            # Files are written outside any transaction, and what the folder now holds is
            # recorded afterwards in one short one: a daemon storing received events on this
            # home (another process, see ``folder_worker``) is never kept waiting for the
            # write lock while files are written and synced.
            later: list[Callable[[], None]] = []
            wrote = 0
            self._resolved.clear()  # links made since the last batch are seen
            self.replica.log.refresh()  # documents another process changed are reloaded
            with store.reading():  # the batch's lookups share one snapshot and its cache
                batch = entries[start : start + BATCH_FILES]
                self._prefetch(batch)
                for entry in batch:
                    try:
                        if self._materialize_one(entry, later):
                            wrote += 1
                    except ShoalError as exc:
                        self.report(f"not written {entry.path}: {exc}")
                    except OSError as exc:
                        self.report(f"not written {entry.path}: {exc.strerror or exc}")
            if wrote:
                # The files must be on disk before the database says they are: one sync per
                # batch instead of an fsync per file (after a crash, a file the database
                # calls written but the disk lost would look like a local edit).
                os.sync()
            if later:
                with store.atomic():  # one commit per batch of files, not one per file
                    for record in later:
                        record()
            written += wrote
        return written

    def _prefetch(self, batch: list[files.FileEntry]) -> None:
        """A batch's versions, chunk locations, path owners and folder records in a few
        queries instead of four a file (``_materialize_one`` looks up whatever a local
        edit changed since; the records it changes are written after the batch)."""
        self._versions = files.versions_at(store := self.store, [e.rowid for e in batch])
        self._where = files.chunk_locations(
            store, [c for v in self._versions.values() if not v.text for c in v.chunks]
        )
        self._owners = files.entries_at_paths(store, [e.path for e in batch if not e.deleted])
        self._by_doc.clear()
        self._at_path.clear()
        select, mine = f"SELECT {_RECORD} FROM folder_files", (self.key,)
        docs = [e.doc_id for e in batch]
        for row in files.rows_in(store, select, "doc", docs, where="root = ?", args=mine):
            path, seen = _record_row(row)
            self._by_doc[seen.doc_id] = (path, seen)
        paths = [e.path for e in batch]
        for row in files.rows_in(store, select, "path", paths, where="root = ?", args=mine):
            path, seen = _record_row(row)
            self._at_path[path] = seen

    def _on_disk_unchanged(self, target: Path, seen: Seen | None) -> bool:
        return _matches(_lstat(target), seen)

    def _records(self, doc_id: bytes, path: str) -> tuple[tuple[str, Seen] | None, Seen | None]:
        """Where this folder last had the document (and what it knew of the file there),
        and what it knows of the file now at ``path`` (maybe another document's), as the
        batch's ``_prefetch`` found them."""
        return self._by_doc.get(doc_id), self._at_path.get(path)

    def _materialize_one(self, entry: files.FileEntry, later: list[Callable[[], None]]) -> bool:
        """Write one file if it needs it; what to record about it is appended to ``later``."""
        store = self.store
        self.incomplete.discard(entry.doc_id)
        if self.ignored(entry.path):
            return False  # this folder's own: ignored paths sync in neither direction
        record, seen = self._records(entry.doc_id, entry.path)
        old_path = None if record is None else record[0]
        if entry.deleted:
            return self._remove_deleted(old_path, later)
        if self._owners.get(entry.path) != entry:
            return False  # another document holds this path and wins it everywhere
        target = self.local_path(entry.path)
        if target is None:
            return False
        if record is not None and old_path != entry.path:
            old_target = self.local_path(record[0])
            if old_target is not None and self._on_disk_unchanged(old_target, record[1]):
                self._remove(old_target)
            later.append(functools.partial(self._forget, record[0]))
        on_disk = _lstat(target)
        if on_disk is not None and not _matches(on_disk, seen):
            self.ingest(target, ScanResult())  # a local edit first: merge, never clobber
            seen = self._seen(entry.path)
            if not self._on_disk_unchanged(target, seen):  # the edit could not be read
                self.report(f"not written {entry.path}: changed here and not read yet (next pass)")
                return False  # the watcher or the next scan ingests it, then it merges
            fresh = files.file_entry(store, entry.doc_id)
            if fresh is None or fresh.deleted:
                return False
            entry = fresh
        found = self._versions.get(entry.rowid) or files.version(store, entry.rowid)
        where = None
        if entry.text:
            live = self.replica.engine.open(entry.doc_id)
            data: bytes | None = str(live.body).encode("utf-8")
            base: bytes | None = bytes(live.doc.get_update())
            content_hash = self.writer.keys.content_hash(data)  # type: ignore[arg-type]
        else:
            where = self._where
            if not where.keys() >= set(found.chunks):
                where = files.chunk_locations(store, found.chunks)
            if not where.keys() >= set(found.chunks):
                self.incomplete.add(entry.doc_id)
                return False  # the rest is still on its way; a later pass writes it
            data, base, content_hash = None, None, found.hash or b""
        if seen is not None and seen.content_hash == content_hash and on_disk is not None:
            if seen.base != base:
                seen.base = base
                later.append(functools.partial(self._remember, entry.path, seen))
            return False
        self._write(target, data, found, where, None if on_disk is None else on_disk.st_mode)
        info = target.lstat()
        if len(self._just_written) >= MAX_JUST_WRITTEN:  # echoes the watcher never delivered
            self._just_written.clear()
        self._just_written[target] = (info.st_size, info.st_mtime_ns)
        seen = Seen(entry.doc_id, info.st_size, info.st_mtime_ns, content_hash, base)
        later.append(functools.partial(self._remember, entry.path, seen))
        return True

    def _write(
        self,
        target: Path,
        data: bytes | None,
        found: files.FileVersion,
        where: dict[bytes, files.Location] | None = None,
        replacing: int | None = None,
    ) -> None:
        """Through a temporary file and an atomic rename (``atomic_write.write_file``):
        readers never see half a file.

        ``replacing``: the ``st_mode`` of the file this one replaces, whose permission bits
        it keeps (a private 0600 file stays private, a script stays executable; never
        setuid, setgid or sticky bits, which new content from elsewhere must not inherit); a
        new file gets the default ones."""
        mode = None if replacing is None else replacing & 0o777
        if data is not None:  # a text file's merge: written now, so its mtime is now
            write_file(target, [data], mode=mode, mtime_ns=None)
        else:  # bytes as they were: they keep their mtime
            blocks = file_content.iter_content(self.replica.engine, found, where, self._opened)
            write_file(target, blocks, mode=mode, mtime_ns=found.mtime_ms * 1_000_000)

    def _remove_deleted(self, old_path: str | None, later: list[Callable[[], None]]) -> bool:
        if old_path is None:
            return False
        target = self.local_path(old_path)
        if target is not None and self._on_disk_unchanged(target, self._seen(old_path)):
            self._remove(target)
            later.append(functools.partial(self._forget, old_path))
            return True
        return False  # changed here since: the local edit wins, the next scan ingests it

    def _remove(self, target: Path) -> None:
        """Remove a file the vault moved or deleted, and the directories that leaves empty
        (directories are not versioned, so a renamed or deleted one would otherwise stay
        behind, empty, in every mirror). A directory that is not empty stays."""
        target.unlink(missing_ok=True)
        directory = target.parent
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:  # not empty (or not ours to remove): it stays, and so do its parents
                return
            self._resolved.pop(directory.relative_to(self.root).as_posix(), None)
            directory = directory.parent

    def gone_line(self) -> str:
        return (
            f"{self.root}: the folder itself is gone (removed, or its drive unmounted: its"
            f" marker {MARKER} is missing); its files are not taken as deleted, and it is not"
            " followed until it is back"
        )

    def _problem(self, result: ScanResult, line: str) -> None:
        result.problems.append(line)
        self.report(line)


class _ChangedWhileReadError(Exception):
    """A file's size or mtime moved while it was read (``Folder.ingest``)."""


def _record_row(row: tuple[Any, ...]) -> tuple[str, Seen]:
    """A ``folder_files`` row of ``_RECORD``'s columns."""
    base = None if row[5] is None else bytes(row[5])
    return str(row[0]), Seen(bytes(row[1]), int(row[2]), int(row[3]), bytes(row[4]), base)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


def _matches(info: os.stat_result | None, seen: Seen | None) -> bool:
    """The file on disk is the one the folder last recorded (absent, if it recorded none)."""
    if info is None:
        return seen is None
    return (
        seen is not None
        and stat.S_ISREG(info.st_mode)
        and (info.st_size, info.st_mtime_ns) == (seen.size, seen.mtime_ns)
    )
