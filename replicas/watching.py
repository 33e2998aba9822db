"""The live loop of watched and mirrored folders: disk events in, vault changes out.

Two sources wake it: watchfiles (inotify) for changes on disk, and the engine's wake-up for
events applied to the vault (from sync or from this replica). A startup scan comes first, so
whatever changed while shoal was not running is reconciled before live events; a new
directory is rescanned, because files written right after ``mkdir`` can precede the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from engine import files
from eventlog.errors import ShoalError
from replicas.atomic_write import TEMP_PREFIX
from replicas.folders import Folder, Report, ScanResult

if TYPE_CHECKING:
    from engine.engine import Engine
    from replicas.vault import Replica

log = logging.getLogger("shoal.folders")

DEBOUNCE_MS: Final = 200
"""How long watchfiles gathers changes into one batch (editors write in several steps)."""
POLL_S: Final = 0.1
"""How often a mirror looks for file events that another process applied."""
FILE_TYPES_SQL: Final = "('file.put', 'file.delete', 'file.batch', 'doc.update', 'blob.chunk')"


def open_folders(
    replica: Replica, watch: list[Path], mirror: list[Path], report: Report
) -> list[Folder]:
    return [Folder(replica, path, report=report) for path in watch] + [
        Folder(replica, path, mirror=True, report=report) for path in mirror
    ]


def summary(result: ScanResult) -> str:
    parts = [
        f"{getattr(result, name)} {name}"
        for name in ("added", "changed", "deleted", "renamed", "written", "skipped")
        if getattr(result, name)
    ]
    return ", ".join(parts) or "no changes"


async def run_folders(replica: Replica, folders: list[Folder], stop: asyncio.Event) -> None:
    """Scan, then follow disk and vault until ``stop`` is set.

    Both are followed from *before* the scan, so nothing that changes while it runs is
    missed: the vault from a cursor taken first, the disk from watches set up first. A file
    edited after the scan read it used to wait for the next restart. The disk task's first
    step sets its watches up (watchfiles makes them before its first await) and then
    waits; the events of the scan's time queue in the watcher and are handled after it.
    """
    if not folders:
        return
    engine = replica.engine
    cursor = engine.store.query_one("SELECT max(rowid) FROM event_index")
    tasks = [asyncio.create_task(_follow_disk(folders, stop))]
    try:
        await asyncio.sleep(0)  # one step of the disk task: the watches exist
        for folder in folders:
            result = folder.scan()
            log.info("%s: startup scan: %s", folder.root, summary(result))
        since = int((cursor or [0])[0] or 0)
        tasks.append(asyncio.create_task(_follow_vault(replica, folders, stop, since)))
        await _until_stopped_or_failed(stop, tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until_stopped_or_failed(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Wait for ``stop``; a task that fails first raises its error here (one that simply
    has nothing to do, like a vault follower without mirrors, is let be)."""
    waiter = asyncio.create_task(stop.wait())
    pending: set[asyncio.Task[Any]] = {waiter, *tasks}
    try:
        while not stop.is_set():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task is waiter or task.cancelled() else task.exception()
                if error is not None:
                    raise error
    finally:
        waiter.cancel()


async def _follow_disk(folders: list[Folder], stop: asyncio.Event) -> None:
    """Hand each folder its watcher batches until ``stop``.

    A watched root that is removed (or whose drive is unmounted) loses its inotify watch:
    watchfiles reports the deletion and then stays silent, even when the folder comes back.
    Following on would ingest nothing from then on without a word, so that is an error: a
    folder worker exits and its daemon starts it again with backoff, which scans the folder
    afresh once it is back (and refuses to start while it is not).
    """
    from watchfiles import Change, awatch

    names = {Change.added: "added", Change.modified: "modified", Change.deleted: "deleted"}
    roots = {folder.root: folder for folder in folders}
    prefixes = [(str(root), str(root) + "/", root) for root in roots]
    async for changes in awatch(
        *roots, stop_event=stop, debounce=DEBOUNCE_MS, step=50, recursive=True
    ):
        batches: dict[Path, list[tuple[str, Path]]] = {}
        for change, raw in changes:
            if raw.rpartition("/")[2].startswith(TEMP_PREFIX):
                continue  # a mirror's own write in progress, renamed into place a moment later
            # By string prefix: ``r in Path(raw).parents`` compared Paths part by part, a
            # tenth of a mirror's work in a bulk write (watchfiles gives resolved paths).
            root = next((r for s, p, r in prefixes if raw == s or raw.startswith(p)), None)
            if root is not None:
                batches.setdefault(root, []).append((names[change], Path(raw)))
        for root, batch in batches.items():
            try:
                result = roots[root].changed_paths(sorted(batch, key=lambda c: str(c[1])))
            except Exception as exc:  # one bad batch must not stop the watcher
                log.error("%s: %s", root, exc)
                continue
            log.info("%s: %s", root, summary(result))
        gone = [folder for folder in folders if not folder.present()]
        if gone:
            raise ShoalError("; ".join(folder.gone_line() for folder in gone))


def _batched_docs(engine: Engine, after: int, upto: int) -> set[bytes]:
    """The files that versions in events ``(after, upto]`` made: a ``file.batch`` names many
    documents, so its index row names none."""
    rows = engine.store.query_all(
        "SELECT DISTINCT doc FROM file_versions WHERE rowid >= ? AND rowid < ?",
        (files.place(after + 1, 0), files.place(upto + 1, 0)),
    )
    return {bytes(row[0]) for row in rows}


async def _follow_vault(
    replica: Replica, folders: list[Folder], stop: asyncio.Event, cursor: int
) -> None:
    mirrors = [folder for folder in folders if folder.mirror]
    if not mirrors:
        return
    engine = replica.engine
    wakeup = asyncio.Event()
    engine.add_wakeup(wakeup)
    try:
        while not stop.is_set():
            # Woken by our own engine, or every POLL_S for what other processes on this
            # home applied (a `shoal serve` beside us, or the daemon we work for).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), POLL_S)
            wakeup.clear()
            await asyncio.sleep(0.02)  # let a burst of events land before writing files
            rows = engine.store.query_all(
                "SELECT DISTINCT doc, max(rowid) OVER () FROM event_index"
                f" WHERE rowid > ? AND type IN {FILE_TYPES_SQL}",
                (cursor,),
            )
            changed = {bytes(row[0]) for row in rows if row[0] is not None}
            if rows:
                last = max(int(row[1]) for row in rows)
                changed |= _batched_docs(engine, cursor, last)
                cursor = last
            for folder in mirrors:
                # A chunk that arrived may complete a file that waits for chunks.
                docs = changed | folder.incomplete if rows else set()
                if not docs:
                    continue
                try:
                    folder.materialize(docs)
                except Exception as exc:
                    log.error("%s: %s", folder.root, exc)
    finally:
        engine.remove_wakeup(wakeup)
