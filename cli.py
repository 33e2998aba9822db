"""``shoal``: the command line. Parses arguments, calls ``replicas/``, renders the answer.

Every command that prints data takes ``--json`` (stable keys, full hex ids). Tables show ids
abbreviated; any unique hex prefix is accepted wherever an id is asked for, as in git. Any
``ShoalError`` becomes one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.table import Table

from engine import views
from eventlog.errors import NotFoundError, ShoalError
from replicas import allocator, inspect
from replicas.home import Home, default_home
from replicas.vault import Replica, init_vault, opened

if TYPE_CHECKING:
    from replicas.apply_helper import ApplyHelper
    from replicas.node import SyncResult

DIR = click.Path(exists=True, file_okay=False, path_type=Path)
P = ParamSpec("P")
R = TypeVar("R")
SHORT = 12

# Piped output (scripts, the demo) is not squeezed to 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> None:
    err.print(f"shoal: error: {message}", markup=False)
    sys.exit(code)


def guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn our typed errors (and a few OS ones) into one line and an exit code."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ShoalError as exc:
            fail(str(exc), exc.exit_code)
        except PermissionError as exc:
            fail(f"permission denied: {exc.filename}", 5)
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), 5)
        raise AssertionError("unreachable")

    return wrapper


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def parse_since(text: str) -> int:
    """``2h``, ``3d``, ``45m``, ``10s`` ago, or an ISO date/time."""
    match = re.fullmatch(r"(\d+)\s*([smhdw])", text.strip())
    now = dt.datetime.now()
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
        delta = dt.timedelta(**{unit[match.group(2)]: int(match.group(1))})
        return int((now - delta).timestamp() * 1000)
    try:
        return int(dt.datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError as exc:
        raise click.BadParameter(f"not a time: {text!r} (try 2h, 3d or 2026-11-01)") from exc


class Context:
    def __init__(self, home: Path) -> None:
        self.home = Home(home)

    @contextmanager
    def replica(self) -> Iterator[Replica]:
        with opened(self.home) as replica:
            yield replica


pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (stable keys).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    envvar="SHOAL_HOME",
    help="Replica home directory [env SHOAL_HOME; default: XDG data dir].",
)
@click.version_option(package_name="shoal")
@click.pass_context
def main(ctx: click.Context, home: Path | None) -> None:
    """shoal: your documents on all your machines, encrypted, signed and in agreement."""
    allocator.tune()
    ctx.obj = Context(home if home is not None else default_home())
    # One-shot commands report failures as one line; daemons turn logging on (-v).
    logging.getLogger("shoal").setLevel(logging.ERROR)


# --- vault ------------------------------------------------------------------------------------


@main.command()
@click.option("--name", help="A name for this replica (default: the host name).")
@json_option
@pass_ctx
@guarded
def init(ctx: Context, name: str | None, as_json: bool) -> None:
    """Create a new vault with this replica as its founder."""
    replica = init_vault(ctx.home, name)
    try:
        info = {
            "vault": replica.log.vault_id.hex(),
            "replica": replica.engine.me.hex(),
            "name": replica.name,
            "home": str(ctx.home.root),
        }
    finally:
        replica.close()
    if as_json:
        emit_json(info)
    else:
        out.print(f"Created vault {info['vault'][:SHORT]} in {info['home']}")
        out.print(f"This replica: {info['replica'][:SHORT]} ({info['name']})")


@main.command()
@json_option
@pass_ctx
@guarded
def status(ctx: Context, as_json: bool) -> None:
    """Vault, replica, event counts, version vector and integrity."""
    with ctx.replica() as replica:
        info: dict[str, Any] = inspect.status(replica)
    if as_json:
        emit_json(info)
        return
    out.print(f"vault      {info['vault']}")
    out.print(f"replica    {info['replica']} ({info['name']})")
    out.print(
        f"events     {info['events']}   documents {info['documents']}   "
        f"members {info['members']}   key epoch {info['epoch']}   files {info['files']}"
    )
    for path in info["conflicts"]:
        out.print(
            f"conflict   {path}: concurrent versions; the same winner is written everywhere,"
            " the others are in `shoal files` history (get them with `shoal get --at`)"
        )
    for path in info["clashes"]:
        out.print(
            f"clash      {path}: made on several replicas as different files; the same one is"
            " written everywhere, `shoal files` lists the others (get them with `shoal get DOC`)"
        )
    table = Table("author", "name", "seq", "head", title="version vector", title_justify="left")
    for author, head in info["version_vector"].items():
        table.add_row(author[:SHORT], head["name"], str(head["seq"]), head["id"][:SHORT])
    out.print(table)
    integrity = "ok" if not (info["pending"] or info["equivocations"]) else "ATTENTION"
    out.print(
        f"integrity  {integrity}: {info['pending']} pending, "
        f"{info['equivocations']} equivocation evidence rows, "
        f"{len(info['frozen'])} frozen author(s); last verify: "
        f"{_last_verify(info['last_verify'])}"
    )


def _last_verify(fact: str | None) -> str:
    if not fact:
        return "never (run `shoal verify`)"
    verdict, _, ms = fact.partition(" at ")
    return f"{verdict} at {when(int(ms))}" if ms.isdigit() else fact


# --- documents ----------------------------------------------------------------------------------


@main.command()
@click.argument("title")
@click.option("--text", default="", help="Initial body text.")
@json_option
@pass_ctx
@guarded
def new(ctx: Context, title: str, text: str, as_json: bool) -> None:
    """Create a document; prints its id."""
    with ctx.replica() as replica:
        doc = replica.engine.create_doc(title, text)
    if as_json:
        emit_json({"doc": doc.hex()})
    else:
        click.echo(doc.hex())


def _edit(ctx: Context, doc: str, action: Callable[[Replica, bytes], None]) -> None:
    with ctx.replica() as replica:
        action(replica, replica.engine.resolve_doc(doc))


@main.command()
@click.argument("doc")
@click.argument("text")
@pass_ctx
@guarded
def append(ctx: Context, doc: str, text: str) -> None:
    """Append TEXT to a document's body."""
    _edit(ctx, doc, lambda r, d: r.engine.append_text(d, text))


@main.command("set-title")
@click.argument("doc")
@click.argument("title")
@pass_ctx
@guarded
def set_title(ctx: Context, doc: str, title: str) -> None:
    """Rename a document."""
    _edit(ctx, doc, lambda r, d: r.engine.set_title(d, title))


@main.command()
@click.argument("doc")
@click.argument("tag")
@pass_ctx
@guarded
def tag(ctx: Context, doc: str, tag: str) -> None:
    """Add TAG to a document."""
    _edit(ctx, doc, lambda r, d: r.engine.add_tag(d, tag))


@main.command()
@json_option
@pass_ctx
@guarded
def docs(ctx: Context, as_json: bool) -> None:
    """List documents: id, title, tags, updated, size."""
    with ctx.replica() as replica:
        rows = views.list_docs(replica.store)
    if as_json:
        emit_json(
            [
                {
                    "doc": r.doc.hex(),
                    "title": r.title,
                    "tags": r.tags,
                    "created_ms": r.created_ms,
                    "updated_ms": r.updated_ms,
                    "size": r.size,
                    "events": r.events,
                }
                for r in rows
            ]
        )
        return
    table = Table("id", "title", "tags", "updated", "size")
    for r in rows:
        table.add_row(
            r.doc.hex()[:SHORT], r.title, ", ".join(r.tags), when(r.updated_ms), str(r.size)
        )
    out.print(table)


@main.command()
@click.argument("doc")
@click.option("--at", "at", metavar="EVENT", help="Show the body as of this event.")
@json_option
@pass_ctx
@guarded
def cat(ctx: Context, doc: str, at: str | None, as_json: bool) -> None:
    """Print a document's body (now, or as of an event)."""
    with ctx.replica() as replica:
        doc_id = replica.engine.resolve_doc(doc)
        if at is None:
            live = replica.engine.open(doc_id)
            body, title = str(live.body), views.list_docs(replica.store, doc_id)[0].title
            event = None
        else:
            row = replica.store.resolve_event(at)
            state = views.state_at(replica.store, replica.engine.keyring, doc_id, row)
            body, title, event = state.body, state.title, row.id.hex()
    if as_json:
        emit_json({"doc": doc_id.hex(), "title": title, "at": event, "body": body})
    else:
        click.echo(body, nl=not body.endswith("\n"))


def _log_json(row: views.LogRow, names: dict[bytes, str]) -> dict[str, Any]:
    return {
        "id": row.id.hex(),
        "author": row.author.hex(),
        "author_name": names.get(row.author, ""),
        "seq": row.seq,
        "lamport": row.lamport,
        "time_ms": row.time_ms,
        "kind": inspect.kind_name(row.kind),
        "type": row.type,
        "doc": row.doc.hex() if row.doc else None,
        "size": row.size,
    }


def _log_table(rows: list[views.LogRow], names: dict[bytes, str], doc_column: bool) -> Table:
    columns = ["id", "author", "seq", "lamport", "time", "type"]
    table = Table(*columns, *(["doc"] if doc_column else []), "size")
    for r in rows:
        author = f"{r.author.hex()[:8]} {names.get(r.author, '')}".rstrip()
        cells = [
            r.id.hex()[:SHORT],
            author,
            str(r.seq),
            str(r.lamport),
            when(r.time_ms),
            r.type or inspect.kind_name(r.kind),
        ]
        if doc_column:
            cells.append(r.doc.hex()[:SHORT] if r.doc else "")
        table.add_row(*cells, str(r.size))
    return table


@main.command()
@click.argument("doc")
@json_option
@pass_ctx
@guarded
def history(ctx: Context, doc: str, as_json: bool) -> None:
    """The events that changed a document or file (id prefix, or a file's path), newest
    first."""
    with ctx.replica() as replica:
        doc_id = _resolve_doc_or_file(replica, doc)
        rows = views.log(replica.store, doc=doc_id)
        names = views.replica_names(replica.store)
    if as_json:
        emit_json([_log_json(r, names) for r in rows])
    else:
        out.print(_log_table(rows, names, doc_column=False))


@main.command("log")
@click.option("--doc", help="Only events of this document or file (id prefix, or a file's path).")
@click.option("--author", help="Only events by this replica (id prefix).")
@click.option("--type", "type_", help="Only this payload type (e.g. doc.update).")
@click.option("--since", help="Only events since a time: 2h, 3d, or an ISO date.")
@click.option("--limit", type=click.IntRange(min=1), help="At most N events.")
@json_option
@pass_ctx
@guarded
def log_command(
    ctx: Context,
    doc: str | None,
    author: str | None,
    type_: str | None,
    since: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """The vault's history, newest first: id, author, seq, lamport, time, type, doc, size."""
    since_ms = parse_since(since) if since else None
    with ctx.replica() as replica:
        doc_id = _resolve_doc_or_file(replica, doc) if doc else None
        author_id = _resolve_author(replica, author) if author else None
        rows = views.log(
            replica.store, doc=doc_id, author=author_id, type_=type_, since_ms=since_ms, limit=limit
        )
        names = views.replica_names(replica.store)
    if as_json:
        emit_json([_log_json(r, names) for r in rows])
    else:
        out.print(_log_table(rows, names, doc_column=True))


def _resolve_doc_or_file(replica: Replica, target: str) -> bytes:
    """A document by id prefix, or a file by path or id prefix (a binary file has no body,
    so it is not among the documents)."""
    from replicas.filesout import resolve_file

    try:
        return replica.engine.resolve_doc(target)
    except NotFoundError:
        return resolve_file(replica, target)


def _resolve_author(replica: Replica, prefix: str) -> bytes:
    names = views.replica_names(replica.store)
    authors = set(replica.store.version_vector()) | set(replica.log.roster)
    matches = [a for a in authors if a.hex().startswith(prefix.lower()) or names.get(a) == prefix]
    if not matches:
        raise NotFoundError(f"no replica {prefix}")
    if len(matches) > 1:
        from eventlog.errors import AmbiguousError

        raise AmbiguousError(f"replica prefix {prefix} is ambiguous")
    return matches[0]


@main.command()
@click.argument("event")
@json_option
@pass_ctx
@guarded
def show(ctx: Context, event: str, as_json: bool) -> None:
    """One event: header fields, signature status, decrypted payload summary."""
    with ctx.replica() as replica:
        info = inspect.show_event(replica, replica.store.resolve_event(event))
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        if key == "payload":
            out.print("payload")
            for pkey, pvalue in value.items():
                out.print(f"  {pkey:<10} {pvalue}", markup=False)
        else:
            out.print(f"{key:<12} {value}", markup=False)


@main.command()
@click.option(
    "--deep", is_flag=True, help="Also rebuild all derived state from the log and compare."
)
@json_option
@pass_ctx
@guarded
def verify(ctx: Context, deep: bool, as_json: bool) -> None:
    """Check signatures, chains, decryptability, equivocations, pending. Exit 1 on any problem."""
    with ctx.replica() as replica:
        report, sqlite_problems = inspect.verify(replica)
        derived: list[str] = []
        if deep:
            from replicas.deep_verify import deep_verify

            derived = deep_verify(replica)
    problems: list[dict[str, Any]] = (
        [
            {
                "kind": p.kind,
                "reason": p.reason,
                "event": p.event_id.hex() if p.event_id else None,
                "author": p.author.hex() if p.author else None,
                "seq": p.seq,
            }
            for p in report.problems
        ]
        + [
            {"kind": "sqlite", "reason": text, "event": None, "author": None, "seq": None}
            for text in sqlite_problems
        ]
        + [
            {"kind": "derived", "reason": text, "event": None, "author": None, "seq": None}
            for text in derived
        ]
    )
    if as_json:
        emit_json({"ok": not problems, "events": report.events, "problems": problems})
    else:
        for p in problems:
            where = (
                f"event {p['event']}"
                if p["event"]
                else (f"author {p['author'][:SHORT]}" if p["author"] else "database")
            )
            seq = f" (seq {p['seq']})" if p["seq"] else ""
            err.print(f"BAD {p['kind']}: {where}{seq}: {p['reason']}", markup=False)
        verdict = "ok" if not problems else f"{len(problems)} problem(s)"
        out.print(f"verified {report.events} events: {verdict}")
    if problems:
        sys.exit(1)


# --- network -----------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """``30s``, ``10m``, ``2h``, ``7d`` -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip())
    if not match:
        raise click.BadParameter(f"not a duration: {text!r} (try 10m, 2h or 7d)")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return float(match.group(1)) * unit


def _setup_logging(verbose: bool) -> None:
    logging.getLogger("shoal").setLevel(logging.NOTSET)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


@main.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory for the relay's vault databases and key.",
)
@click.option("--listen", default="127.0.0.1:7420", show_default=True, help="HOST:PORT.")
@click.option("--quota", default=1 << 30, show_default=True, help="Bytes per vault.")
@click.option("--max-connections", default=1000, show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Log connections.")
@guarded
def relay(data: Path, listen: str, quota: int, max_connections: int, verbose: bool) -> None:
    """Run a blind relay: stores and forwards ciphertext for many vaults."""
    import asyncio

    from replicas.relay import parse_listen, serve_relay

    _setup_logging(verbose)
    host, port = parse_listen(listen, 7420)
    asyncio.run(serve_relay(data, host, port, quota=quota, max_connections=max_connections))


@main.command()
@click.option("--listen", help="Accept LAN peers on HOST:PORT.")
@click.option("--relay", "relays", multiple=True, help="Relay URL (repeatable).")
@click.option("--peer", "peers", multiple=True, help="Peer URL (repeatable).")
@click.option("--discover", is_flag=True, help="Find LAN peers of this vault with mDNS.")
@click.option("--watch", "watch_dirs", multiple=True, type=DIR, help="Ingest this folder live.")
@click.option("--mirror", "mirror_dirs", multiple=True, type=DIR, help="Keep this folder two-way.")
@click.option("--processors", metavar="LIST", help="Offer ocr,extract,embed,llm, auto or none.")
@click.option("-v", "--verbose", is_flag=True, help="Log connections.")
@pass_ctx
@guarded
def serve(
    ctx: Context,
    listen: str | None,
    relays: tuple[str, ...],
    peers: tuple[str, ...],
    discover: bool,
    watch_dirs: tuple[Path, ...],
    mirror_dirs: tuple[Path, ...],
    processors: str | None,
    verbose: bool,
) -> None:
    """Sync live with peers and relays until interrupted."""
    import asyncio

    from replicas.folder_worker import FolderWorker
    from replicas.node import serve_node
    from replicas.processing import serving_task
    from replicas.relay import parse_listen
    from replicas.watching import open_folders

    _setup_logging(verbose)
    bind = parse_listen(listen, 7421) if listen else None
    with ctx.replica() as replica:
        worker = None
        if watch_dirs or mirror_dirs:  # checked here, followed by a worker process
            open_folders(replica, list(watch_dirs), list(mirror_dirs), _report)
            worker = FolderWorker(replica.home.root, list(watch_dirs), list(mirror_dirs), verbose)
        work = serving_task(replica, processors)
        asyncio.run(serve_node(replica, bind, list(relays), list(peers), discover, worker, work))


def _report(line: str) -> None:
    err.print(f"shoal: {line}", markup=False)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@json_option
@pass_ctx
@guarded
def add(ctx: Context, paths: tuple[Path, ...], as_json: bool) -> None:
    """Store files (or whole folders) in the vault; a folder's files keep their paths in it."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TransferSpeedColumn

    from replicas.folders import Folder, ScanResult
    from replicas.watching import summary

    total = ScanResult()
    with (
        ctx.replica() as replica,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=True,
            disable=as_json or not err.is_terminal,
        ) as bar,
    ):
        for path in paths:
            task = bar.add_task(path.name or str(path), total=None)
            if path.is_dir():
                folder = Folder(replica, path, report=_report)

                def advance(done: int, size: int, task: TaskID = task) -> None:
                    bar.update(task, completed=done, total=size)

                result = folder.scan(advance)
            else:
                local = path.resolve()
                folder = Folder(replica, local.parent, report=_report, marked=False)
                result = ScanResult()
                folder.ingest_all([(local, local.lstat())], result)
            for name in (
                "added",
                "changed",
                "deleted",
                "renamed",
                "unchanged",
                "skipped",
                "new_bytes",
            ):
                setattr(total, name, getattr(total, name) + getattr(result, name))
            total.problems += result.problems
    if as_json:
        emit_json({k: v for k, v in vars(total).items()})
    else:
        out.print(f"{summary(total)}; {total.new_bytes} new bytes stored")
    if total.problems:
        sys.exit(1)


def _run_folders(ctx: Context, watch_dirs: list[Path], mirror_dirs: list[Path]) -> None:
    import asyncio
    import signal

    from replicas.watching import open_folders, run_folders

    _setup_logging(True)

    async def run(replica: Replica) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        folders = open_folders(replica, watch_dirs, mirror_dirs, _report)
        where = ", ".join(str(f.root) for f in folders)
        print(f"shoal: following {where} (Ctrl-C stops; `shoal serve` also syncs)", flush=True)
        await run_folders(replica, folders, stop)

    with ctx.replica() as replica:
        asyncio.run(run(replica))


@main.command()
@click.argument("dirs", nargs=-1, required=True, type=DIR)
@pass_ctx
@guarded
def watch(ctx: Context, dirs: tuple[Path, ...]) -> None:
    """Ingest folders live (a startup scan catches what changed while shoal was off)."""
    _run_folders(ctx, list(dirs), [])


@main.command()
@click.argument("dirs", nargs=-1, required=True, type=DIR)
@pass_ctx
@guarded
def mirror(ctx: Context, dirs: tuple[Path, ...]) -> None:
    """Write the vault's files into folders and ingest edits made there, live."""
    _run_folders(ctx, [], list(dirs))


@main.command("files")
@click.option("--deleted", is_flag=True, help="Also list deleted files.")
@json_option
@pass_ctx
@guarded
def files_command(ctx: Context, deleted: bool, as_json: bool) -> None:
    """The vault's files: path, size, content hash, versions, document."""
    from engine import files

    with ctx.replica() as replica:
        entries = files.file_entries(replica.store, deleted=deleted)
        clashed = set(files.clashes(replica.store))
    if as_json:
        emit_json(
            [
                {
                    "path": e.path,
                    "size": e.size,
                    "hash": e.hash.hex() if e.hash else None,
                    "mime": e.mime,
                    "versions": e.versions,
                    "doc": e.doc_id.hex(),
                    "deleted": e.deleted,
                    "conflict": e.conflict,
                    "clash": e.path in clashed and not e.deleted,
                    "text": e.text,
                }
                for e in entries
            ]
        )
        return
    table = Table("path", "size", "hash", "versions", "doc", "state", box=None)
    for e in entries:
        state = "deleted" if e.deleted else ("conflict" if e.conflict else "")
        if e.path in clashed and not e.deleted:
            state = f"{state}, clash" if state else "clash"
        hash_hex = e.hash.hex()[:SHORT] if e.hash else ""
        table.add_row(
            e.path, f"{e.size:,}", hash_hex, str(e.versions), e.doc_id.hex()[:SHORT], state
        )
    out.print(table)


@main.command()
@click.argument("target")
@click.option("--at", "at", metavar="EVENT", help="The version made by this event.")
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path),
    help="Write to this file, or into this directory (default: stdout).",
)
@pass_ctx
@guarded
def get(ctx: Context, target: str, at: str | None, out_path: Path | None) -> None:
    """Write a file's content (any version) byte-exact."""
    from replicas.filesout import resolve_file, write_version

    with ctx.replica() as replica:
        doc_id = resolve_file(replica, target)
        write_version(replica, doc_id, at, out_path)


@main.command()
@click.argument("url")
@json_option
@pass_ctx
@guarded
def sync(ctx: Context, url: str, as_json: bool) -> None:
    """Exchange events with a peer or relay until both sides hold each other's events."""
    from replicas.apply_helper import ApplyHelper

    with ctx.replica() as replica:
        helper = ApplyHelper(replica.home.root)
        helper.start()  # boots beside our own imports and handshake; stopped if not needed
        try:
            result = _sync_with_progress(replica, url, helper, as_json)
        finally:
            helper.cancel()
        info = {
            "url": url,
            "peer": result.peer.hex() if result.peer else None,
            "peer_role": result.peer_role,
            "sent": result.stats.events_sent,
            "received": result.stats.events_received,
            "stored": result.stats.events_stored,
            "bytes_sent": result.stats.bytes_sent,
            "bytes_received": result.stats.bytes_received,
            "applied_by_helper": result.helper_applied,
        }
    if as_json:
        emit_json(info)
    else:
        out.print(
            f"synced with {info['peer_role']} {str(info['peer'])[:SHORT]} at {url}: "
            f"sent {info['sent']} events, received {info['received']} "
            f"({info['stored']} new)"
        )


def _sync_with_progress(
    replica: Replica, url: str, helper: ApplyHelper, as_json: bool
) -> SyncResult:
    import asyncio

    from rich.progress import Progress, SpinnerColumn, TextColumn

    from replicas.node import sync_once

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        console=err,
        transient=True,
        disable=as_json,
    ) as progress:
        task = progress.add_task("syncing", total=None)
        received = 0

        def tick(count: int) -> None:
            nonlocal received
            received += count
            progress.update(task, description=f"syncing: {received} events received")

        return asyncio.run(sync_once(replica, url, on_stored=tick, helper=helper))


@main.command()
@click.option("--relay", "relay_url", help="Relay the new device will join through.")
@click.option("--peer", "peer_url", help="Peer (a `shoal serve --listen`) to join through.")
@click.option("--expires", default="24h", show_default=True, help="How long the code is valid.")
@json_option
@pass_ctx
@guarded
def invite(
    ctx: Context, relay_url: str | None, peer_url: str | None, expires: str, as_json: bool
) -> None:
    """Print a one-time, expiring code that lets a new device join this vault."""
    import asyncio

    from replicas.pairing import create_invite

    url = relay_url or peer_url
    if not url or (relay_url and peer_url):
        raise click.UsageError("give exactly one of --relay URL or --peer URL")
    with ctx.replica() as replica:
        code = asyncio.run(create_invite(replica, url, parse_duration(expires)))
    if as_json:
        emit_json({"code": code.encode(), "url": url, "expires_ms": code.expires_ms})
    else:
        err.print(f"On the new device run (valid until {when(code.expires_ms)}, once):")
        click.echo(f"shoal join {code.encode()}")


@main.command()
@click.argument("code")
@click.option("--name", help="A name for this replica (default: the host name).")
@json_option
@pass_ctx
@guarded
def join(ctx: Context, code: str, name: str | None, as_json: bool) -> None:
    """Join a vault with an invite code (in an empty home) and pull all of it."""
    import asyncio
    import socket

    from replicas.pairing import join as join_vault_with

    replica = asyncio.run(join_vault_with(ctx.home, code, name or socket.gethostname()))
    _report_joined(replica, as_json)


def _report_joined(replica: Replica, as_json: bool) -> None:
    try:
        info: dict[str, Any] = {
            "vault": replica.log.vault_id.hex(),
            "replica": replica.engine.me.hex(),
            "events": replica.store.event_count(),
            "documents": len(views.list_docs(replica.store)),
        }
    finally:
        replica.close()
    if as_json:
        emit_json(info)
    else:
        out.print(
            f"joined vault {info['vault'][:SHORT]} as {info['replica'][:SHORT]}: "
            f"{info['events']} events, {info['documents']} documents"
        )


@main.command("recovery-key")
@pass_ctx
@guarded
def recovery_key(ctx: Context) -> None:
    """Print the vault's recovery key, once. Keep it safe, like a restic password."""
    from replicas.pairing import take_recovery_key

    with ctx.replica() as replica:
        key = take_recovery_key(replica)
    err.print("Your recovery key (shown only this once; it can restore the whole vault):")
    click.echo(key)


@main.command()
@click.argument("url")
@click.option(
    "--recovery-key",
    "key",
    envvar="SHOAL_RECOVERY_KEY",
    prompt=True,
    hide_input=True,
    help="The key from `shoal recovery-key` [env SHOAL_RECOVERY_KEY].",
)
@click.option("--name", help="A name for this replica (default: the host name).")
@json_option
@pass_ctx
@guarded
def restore(ctx: Context, url: str, key: str, name: str | None, as_json: bool) -> None:
    """Restore the vault from a relay into an empty home, with the recovery key."""
    import asyncio
    import socket

    from replicas.pairing import restore as restore_vault

    replica = asyncio.run(restore_vault(ctx.home, url, key, name or socket.gethostname()))
    _report_joined(replica, as_json)


@main.command()
@click.argument("url")
@json_option
@pass_ctx
@guarded
def backup(ctx: Context, url: str, as_json: bool) -> None:
    """Check what the relay holds of each log, proven from signed events."""
    import asyncio

    from replicas.backup import backup_report

    with ctx.replica() as replica:
        rows = asyncio.run(backup_report(replica, url))
    data = [
        {
            "author": r.author.hex(),
            "name": r.name,
            "local_seq": r.local_seq,
            "relay_seq": r.relay_seq,
            "proven": r.proven,
            "status": r.status,
            "failures": r.failed,
        }
        for r in rows
    ]
    ok = all(r.status == "complete" for r in rows)
    if as_json:
        emit_json({"ok": ok, "authors": data})
    else:
        table = Table("author", "name", "local", "relay", "proofs", "status")
        for r in rows:
            table.add_row(
                r.author.hex()[:SHORT],
                r.name,
                str(r.local_seq),
                str(r.relay_seq),
                f"{r.proven} ok" + (f", {len(r.failed)} bad" if r.failed else ""),
                r.status,
            )
        out.print(table)
        for r in rows:
            for failure in r.failed:
                err.print(f"BAD proof from relay for {r.author.hex()[:SHORT]}: {failure}")
    if not ok:
        sys.exit(1)


@main.group(invoke_without_command=True)
@json_option
@click.pass_context
def devices(click_ctx: click.Context, as_json: bool) -> None:
    """Members of the vault: id, name, role, key epochs, added and removed by whom."""
    if click_ctx.invoked_subcommand is None:
        _list_devices(click_ctx.ensure_object(Context), as_json)


@guarded
def _list_devices(ctx: Context, as_json: bool) -> None:
    with ctx.replica() as replica:
        rows = inspect.devices(replica)
    if as_json:
        emit_json(rows)
        return
    table = Table("id", "name", "role", "epochs", "added by", "added at", "note")
    for r in rows:
        note = "this replica" if r["this_replica"] else ""
        if r["role"] == "invite":
            note = "used" if r["used"] else f"expires {when(r['expires_ms'])}"
        if r["removed"]:
            removed = f"REMOVED {when(r['removed_ms'])} by {r['removed_by'][:8]}"
            note = f"{removed}, events after seq {r['cutoff']} refused"
        table.add_row(
            r["id"][:SHORT],
            r["name"],
            r["role"],
            str(len(r["epochs"])),
            f"{r['added_by'][:8]} {r['added_by_name']}".rstrip(),
            when(r["added_ms"]),
            note,
        )
    out.print(table)


@devices.command("remove")
@click.argument("device")
@json_option
@pass_ctx
@guarded
def devices_remove(ctx: Context, device: str, as_json: bool) -> None:
    """Remove a member (id prefix): a new key epoch that only the remaining members get."""
    from replicas.devices import remove_device

    with ctx.replica() as replica:
        result = remove_device(replica, device)
    if as_json:
        emit_json(result)
        return
    out.print(
        f"removed {result['removed'][:SHORT]} ({result['role']}); its events after seq"
        f" {result['cutoff']} will be refused; new key epoch for"
        f" {len(result['recipients'])} remaining member(s)."
        " Sync (`shoal sync` or a running `shoal serve`) to tell the others."
    )


@main.command()
@guarded
def demo() -> None:
    """A guided tour on embedded defaults, in a temporary directory (removed afterwards)."""
    from replicas.demo import run_demo

    run_demo(lambda text: out.print(text, markup=False))


# --- processors: jobs, process, search, info ----------------------------------------------


@main.command()
@json_option
@pass_ctx
@guarded
def jobs(ctx: Context, as_json: bool) -> None:
    """Processor jobs: waiting for a capability, claimed, done, failed (with the reason)."""
    from replicas import processing

    with ctx.replica() as replica:
        rows = processing.job_rows(replica)
    if as_json:
        emit_json(rows)
        return
    table = Table("doc", "title", "processor", "state")
    for r in rows:
        table.add_row(r["doc"][:SHORT], r["title"], r["processor"], r["detail"])
    out.print(table)


@main.command()
@click.option("--once", is_flag=True, help="One pass over what is claimable now; no waiting.")
@click.option(
    "--processors",
    "offer",
    metavar="LIST",
    help="Offer ocr,extract,embed,llm,textstats, auto or none [default: auto = detected].",
)
@json_option
@pass_ctx
@guarded
def process(ctx: Context, once: bool, offer: str | None, as_json: bool) -> None:
    """Run this replica's processors until its share of the job queue is drained."""
    from replicas import processing

    with ctx.replica() as replica:
        outcomes = processing.process(replica, once=once, offer=offer)
    rows = [
        {
            "processor": o.key.processor,
            "doc": o.key.doc.hex(),
            "status": o.status,
            "detail": o.detail,
        }
        for o in outcomes
    ]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        detail = f": {r['detail']}" if r["detail"] else ""
        out.print(f"{r['processor']:<10} {r['doc'][:SHORT]}  {r['status']}{detail}", markup=False)
    done = sum(1 for r in rows if r["status"] == "done")
    out.print(f"processed {done} job(s), {len(rows) - done} not done")


@main.command()
@click.argument("query")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 1000))
@json_option
@pass_ctx
@guarded
def search(ctx: Context, query: str, k: int, as_json: bool) -> None:
    """Search documents by meaning and keywords (hybrid ranking)."""
    from replicas import processing

    with ctx.replica() as replica:
        found = processing.search(replica, query, k)
    if as_json:
        emit_json(found)
        return
    if not found["mode"].startswith("hybrid"):
        out.print(f"[dim]{found['mode']}[/dim]")
    table = Table("score", "doc", "title", "snippet")
    for hit in found["hits"]:
        snippet = " ".join(hit["snippet"].split())
        table.add_row(f"{hit['score']:.3f}", hit["doc"][:SHORT], hit["title"], snippet)
    out.print(table)


def _by(entry: dict[str, Any]) -> str:
    who = f"{entry['by'][:8]} {entry['by_name']}".rstrip()
    stale = "" if entry["current"] else ", older input"
    return f"{entry['processor']} v{entry['version']} by {who} at {when(entry['time_ms'])}{stale}"


@main.command()
@click.argument("doc")
@json_option
@pass_ctx
@guarded
def info(ctx: Context, doc: str, as_json: bool) -> None:
    """A document's meta, text length, summary, and where each derived field came from."""
    from replicas import processing

    with ctx.replica() as replica:
        found = processing.doc_info(replica, doc)
    if as_json:
        emit_json(found)
        return
    out.print(f"doc        {found['doc']}", markup=False)
    out.print(f"title      {found.get('title', '')}", markup=False)
    if found["kind"] == "file":
        out.print(
            f"file       {found['path']} ({found['mime']}, {found['size']} bytes)", markup=False
        )
    if found.get("tags"):
        out.print(f"tags       {', '.join(found['tags'])}", markup=False)
    out.print(f"text       {found['text_chars'] or 0} characters", markup=False)
    derived = found["derived"]
    if "text" in derived:
        t = derived["text"]
        out.print(f"  extracted by {t['method']}: {_by(t)}", markup=False)
    if "summary" in derived:
        s = derived["summary"]
        out.print(f"summary    {s['text']}", markup=False)
        out.print(f"  {_by(s)} (model {s['model']})", markup=False)
    if "embedding" in derived:
        e = derived["embedding"]
        out.print(f"embedding  {e['chunks']} chunk(s), {e['embedder']}", markup=False)
        out.print(f"  {_by(e)}", markup=False)
    for job in found["jobs"]:
        if job["state"] != "done":
            out.print(f"job        {job['processor']}: {job['detail']}", markup=False)


if __name__ == "__main__":
    main()
