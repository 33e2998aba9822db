"""Processors on a replica: config, capabilities, the runner in ``serve``, and the read views.

Config (``HOME/config.toml``; every key optional)::

    [processors]
    offer = ["extract", "ocr", "embed", "llm"]  # or "auto" (all detected) or "none"
    jobs = ["extract", "embed", "summary"]      # what the vault wants done (same everywhere)
    embed_model = "local:all-minilm-l6-v2"      # or "ollama:nomic-embed-text"
    llm_model = "llama3.2"
    summary_prompt = "Summarize ..."
    lease_s = 600          # how long a claim holds a job
    grace_s = 5            # extra wait before taking over an expired lease (clock skew)
    settle_s = 1.0         # wait after claiming, so concurrent claims are seen
    backoff_s = 30         # first retry delay; doubles per failed attempt
    max_attempts = 3

    [ollama]
    host = "http://127.0.0.1:11434"          # else $OLLAMA_HOST, else Ollama's default

``--processors ocr,extract`` (or ``auto``, ``none``) on ``shoal serve`` / ``shoal process``
overrides ``offer``; by default ``process`` offers ``auto`` and ``serve`` offers ``none``. A
capability is advertised only if it is offered *and* detected (tesseract present, the
embedding model installed, the Ollama model served).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from engine import files, views
from eventlog.errors import NotFoundError, ShoalError
from processors import jobs
from processors.catalog import (
    DEFAULT_EMBEDDER,
    DEFAULT_LLM,
    DEFAULT_PROMPT,
    EmbedProcessor,
    ExtractProcessor,
    FileSource,
    Processor,
    SummaryProcessor,
    TextStatsProcessor,
)
from processors.derived import Derived, StoredResult
from processors.runner import Job, Outcome, Runner, Settings, now_ms
from replicas.vault import Replica

log = logging.getLogger("shoal.processing")

CATEGORIES: Final = ("extract", "ocr", "embed", "llm", "textstats")
DEFAULT_JOBS: Final = ("extract", "embed", "summary")
REDETECT_S: Final = 60.0


class ConfigError(ShoalError):
    exit_code = 2


@dataclass
class ProcessingConfig:
    offer: tuple[str, ...] | None = None
    """Capability categories this replica offers; None: all that is detected."""
    wanted: tuple[str, ...] = DEFAULT_JOBS
    """The processors whose jobs the vault wants (``[processors] jobs``)."""
    embed_model: str = DEFAULT_EMBEDDER
    llm_model: str = DEFAULT_LLM
    summary_prompt: str = DEFAULT_PROMPT
    ollama_host: str | None = None
    policy: jobs.Policy = field(default_factory=jobs.Policy)
    settle_s: float = 1.0
    batch: int = 4


def parse_offer(text: str) -> tuple[str, ...] | None:
    """``ocr,extract,embed,llm``, ``none``, or ``auto`` (None: all that is detected)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names == ("auto",):
        return None
    if names in ((), ("none",)):
        return ()
    unknown = sorted(set(names) - set(CATEGORIES))
    if unknown:
        raise ConfigError(
            f"unknown processor(s) {', '.join(unknown)} (use {', '.join(CATEGORIES)})"
        )
    return names


def _number(section: dict[str, Any], name: str, default: float) -> float:
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"config.toml [processors] {name} must be a non-negative number")
    return float(value)


def _names(section: dict[str, Any], name: str, default: tuple[str, ...] | None) -> Any:
    value = section.get(name, default)
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"config.toml [processors] {name} must be a list of names")
    return tuple(value)


def _text(section: dict[str, Any], name: str, default: str) -> str:
    value = section.get(name, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config.toml [processors] {name} must be a non-empty string")
    return value


def load_config(
    replica: Replica, offer: str | None = None, *, default_offer: str = "auto"
) -> ProcessingConfig:
    """The ``[processors]`` and ``[ollama]`` sections; ``offer`` (command line) wins."""
    config = replica.home.config()
    section = config.get("processors", {})
    ollama = config.get("ollama", {})
    if not isinstance(section, dict) or not isinstance(ollama, dict):
        raise ConfigError("config.toml: [processors] and [ollama] must be tables")
    if offer is None:
        configured = section.get("offer", default_offer)
        if isinstance(configured, list) and all(isinstance(n, str) for n in configured):
            configured = ",".join(configured) or "none"
        if not isinstance(configured, str):
            raise ConfigError("config.toml [processors] offer must be a list, 'auto' or 'none'")
        offer = configured
    offered = parse_offer(offer)
    wanted = _names(section, "jobs", DEFAULT_JOBS)
    unknown = sorted(set(wanted) - {"extract", "embed", "summary", "textstats"})
    if unknown:
        raise ConfigError(f"config.toml [processors] jobs: unknown {', '.join(unknown)}")
    host = ollama.get("host") or os.environ.get("OLLAMA_HOST") or None
    policy = jobs.Policy(
        lease_ms=int(_number(section, "lease_s", 600) * 1000),
        grace_ms=int(_number(section, "grace_s", 5) * 1000),
        max_attempts=max(1, int(_number(section, "max_attempts", 3))),
        backoff_base_ms=int(_number(section, "backoff_s", 30) * 1000),
    )
    return ProcessingConfig(
        offer=offered,
        wanted=wanted,
        embed_model=_text(section, "embed_model", DEFAULT_EMBEDDER),
        llm_model=_text(section, "llm_model", DEFAULT_LLM),
        summary_prompt=_text(section, "summary_prompt", DEFAULT_PROMPT),
        ollama_host=host if isinstance(host, str) else None,
        policy=policy,
        settle_s=_number(section, "settle_s", 1.0),
        batch=max(1, int(_number(section, "batch", 4))),
    )


def build_processors(cfg: ProcessingConfig) -> list[Processor]:
    made: list[Processor] = []
    for name in cfg.wanted:
        if name == "extract":
            made.append(ExtractProcessor())
        elif name == "embed":
            made.append(EmbedProcessor(cfg.embed_model, cfg.ollama_host))
        elif name == "summary":
            made.append(SummaryProcessor(cfg.llm_model, cfg.summary_prompt, cfg.ollama_host))
        elif name == "textstats":
            made.append(TextStatsProcessor())
    return made


def detect_offer(cfg: ProcessingConfig) -> frozenset[str]:
    """The capabilities this replica advertises: detected ones, within what it offers."""
    categories = set(CATEGORIES if cfg.offer is None else cfg.offer)
    if not categories:
        return frozenset()
    caps: set[str] = set()
    if "textstats" in categories:
        caps.add("textstats")
    if categories & {"extract", "ocr", "embed", "llm"}:
        from processors.caps import detect_caps

        found = detect_caps(ollama_host=cfg.ollama_host)

        def listed(name: str) -> list[str]:
            value = found.get(name)
            return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

        if "ocr" in categories and found.get("ocr") is True:
            caps.add("ocr")
        if "extract" in categories and listed("extract"):
            caps.add("extract")
        if "embed" in categories:
            caps.update(f"embed:{name}" for name in listed("embed"))
        if "llm" in categories:
            for model in listed("llm"):
                caps.add(f"llm:{model}")
                if model.endswith(":latest"):  # Ollama's tags name "llama3.2" "llama3.2:latest"
                    caps.add(f"llm:{model.removesuffix(':latest')}")
    return frozenset(caps)


def index_dir(replica: Replica) -> Path:
    return replica.home.root / "index"


def open_derived(replica: Replica) -> Derived:
    """The processors' derived state, folded up to the log's end."""
    derived = Derived(replica.engine, index_dir(replica))
    derived.fold()
    return derived


def make_runner(
    replica: Replica, cfg: ProcessingConfig, caps: frozenset[str], derived: Derived | None = None
) -> Runner:
    settings = Settings(caps=caps, policy=cfg.policy, settle_s=cfg.settle_s, batch=cfg.batch)
    return Runner(replica.engine, derived or open_derived(replica), build_processors(cfg), settings)


# --- shoal process / shoal serve --------------------------------------------------------------


def process(replica: Replica, *, once: bool, offer: str | None = None) -> list[Outcome]:
    """Run this replica's share of the queue until it is drained (``shoal process``)."""
    cfg = load_config(replica, offer)
    runner = make_runner(replica, cfg, detect_offer(cfg))
    try:
        if not runner.settings.caps:
            runner.advertise()
            return []
        return asyncio.run(runner.drain(wait_for_backoff=not once))
    finally:
        runner.close()


def serving_task(
    replica: Replica, offer: str | None
) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """What ``shoal serve`` runs beside sync: fold results into the index, run our jobs.

    Unlike ``shoal process``, ``serve`` offers nothing unless asked (``--processors`` or
    ``[processors] offer``): a sync daemon should not start loading models by surprise.
    It always folds results, so every full replica's search index follows the vault.
    """
    cfg = load_config(replica, offer, default_offer="none")

    async def run(stop: asyncio.Event) -> None:
        caps = await asyncio.to_thread(detect_offer, cfg)
        runner = make_runner(replica, cfg, caps)
        detected_at = time.monotonic()
        print(f"shoal serve: processors {', '.join(sorted(caps)) or 'none'}", flush=True)

        def redetect() -> None:
            nonlocal detected_at
            detected_at = 0.0

        runner.on_model_unavailable = redetect

        def refresh() -> None:
            # Ollama may come and go: re-detect now and then (in the loop: it is quick,
            # and bounded by the detection timeout).
            nonlocal detected_at
            if cfg.offer != () and time.monotonic() - detected_at > REDETECT_S:
                runner.settings.caps = detect_offer(cfg)
                detected_at = time.monotonic()

        await runner.run_forever(stop, refresh=refresh)

    return run


# --- read views -------------------------------------------------------------------------------


def describe_state(state: jobs.JobState, names: dict[bytes, str]) -> tuple[str, str]:
    """``(state, detail)`` for ``shoal jobs``."""

    def who(author: bytes) -> str:
        return f"{author.hex()[:8]} {names.get(author, '')}".rstrip()

    def at(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")

    if isinstance(state, jobs.Done):
        return "done", f"done by {who(state.by)} at {at(state.time_ms)}"
    if isinstance(state, jobs.Failed):
        return "failed", f"failed after {state.attempts} attempt(s): {state.reason}"
    if isinstance(state, jobs.Claimed):
        return "claimed", f"claimed by {who(state.by)} until {at(state.until_ms)}"
    if isinstance(state, jobs.Waiting):
        last = f" (last failure: {state.last_reason})" if state.last_reason else ""
        return "waiting", f"waiting for capability {state.need}{last}"
    retry = ""
    if state.attempts:
        retry = f" (attempt {state.attempts + 1}; last failure: {state.last_reason})"
        if state.not_before_ms > now_ms():
            retry += f", not before {at(state.not_before_ms)}"
    return "claimable", f"claimable by a replica with {state.need}{retry}"


def job_rows(replica: Replica) -> list[dict[str, Any]]:
    """Every job the plan wants, with its state (``shoal jobs``)."""
    cfg = load_config(replica)
    runner = Runner(
        replica.engine, open_derived(replica), build_processors(cfg), Settings(policy=cfg.policy)
    )
    names = views.replica_names(replica.store)
    rows = []
    for job in sorted(runner.jobs(), key=lambda j: (j.key.doc, j.key.processor)):
        state, detail = describe_state(job.state, names)
        rows.append(_job_json(job, state, detail))
    return rows


def _job_json(job: Job, state: str, detail: str) -> dict[str, Any]:
    s = job.state
    by = getattr(s, "by", None)
    return {
        "processor": job.key.processor,
        "version": job.key.version,
        "doc": job.key.doc.hex(),
        "title": job.source.path if isinstance(job.source, FileSource) else job.source.title,
        "input": job.key.input.hex(),
        "need": job.need,
        "state": state,
        "detail": detail,
        "by": by.hex() if isinstance(by, bytes) else None,
        "until_ms": getattr(s, "until_ms", None),
        "attempts": getattr(s, "attempts", 0),
        "reason": getattr(s, "reason", None) or getattr(s, "last_reason", None) or None,
    }


def _provenance(result: StoredResult, names: dict[bytes, str], current: bool) -> dict[str, Any]:
    return {
        "processor": result.key.processor,
        "version": result.key.version,
        "input": result.key.input.hex(),
        "by": result.author.hex(),
        "by_name": names.get(result.author, ""),
        "time_ms": result.time_ms,
        "current": current,
    }


def resolve_any_doc(replica: Replica, prefix: str) -> bytes:
    """A note or a file by hex id prefix."""
    try:
        return replica.engine.resolve_doc(prefix)
    except NotFoundError:
        matches = [
            e.doc_id
            for e in files.file_entries(replica.store)
            if e.doc_id.hex().startswith(prefix.lower())
        ]
        if len(matches) == 1:
            return matches[0]
        raise


def doc_info(replica: Replica, prefix: str) -> dict[str, Any]:
    """Meta, derived text length, summary and the provenance of each derived field."""
    doc = resolve_any_doc(replica, prefix)
    cfg = load_config(replica)
    derived = open_derived(replica)
    runner = Runner(replica.engine, derived, build_processors(cfg), Settings(policy=cfg.policy))
    names = views.replica_names(replica.store)
    info: dict[str, Any] = {"doc": doc.hex()}
    listed = views.list_docs(replica.store, doc)
    entry = files.file_entry(replica.store, doc)
    if listed:
        row = listed[0]
        info.update(
            title=row.title,
            tags=row.tags,
            created_ms=row.created_ms,
            updated_ms=row.updated_ms,
            size=row.size,
        )
    if entry is not None:
        info.update(
            kind="file", path=entry.path, mime=entry.mime, size=entry.size, deleted=entry.deleted
        )
        info.setdefault("title", entry.path)
    else:
        info["kind"] = "note"
    doc_jobs = [j for j in runner.jobs() if j.key.doc == doc]
    current = {j.key for j in doc_jobs}
    derived_info: dict[str, Any] = {}
    for processor, field_name in (
        ("extract", "text"),
        ("summary", "summary"),
        ("embed", "embedding"),
        ("textstats", "textstats"),
    ):
        result = derived.latest_result(doc, processor)
        if result is None:
            continue
        here = _provenance(result, names, result.key in current)
        out = result.output
        if processor == "extract":
            text = out.get("text", "")
            here.update(
                chars=len(text), method=out.get("method"), truncated=out.get("truncated", False)
            )
        elif processor == "summary":
            here.update(text=out.get("summary", ""), model=out.get("model"))
        elif processor == "embed":
            here.update(
                chunks=len(out.get("chunks", [])), embedder=out.get("embedder"), dim=out.get("dim")
            )
        else:
            here.update({k: v for k, v in out.items() if isinstance(v, int | str)})
        derived_info[field_name] = here
    info["derived"] = derived_info
    body_chars = None
    if listed:
        body_chars = len(str(replica.engine.open(doc).body))
    info["text_chars"] = derived_info.get("text", {}).get("chars", body_chars)
    info["jobs"] = [_job_json(j, *describe_state(j.state, names)) for j in doc_jobs]
    return info


def search(replica: Replica, query: str, k: int) -> dict[str, Any]:
    """Hybrid search over the index every full replica keeps (``shoal search``)."""
    if not query.strip():
        raise ConfigError("empty query")
    derived = open_derived(replica)
    index = derived.index()
    meta = derived.index_embedder()
    if index is None or meta is None or len(index) == 0:
        raise NotFoundError(
            "no search index yet: no document has been embedded "
            "(run `shoal process` on a replica that can embed, then sync)"
        )
    embedder_name, dim = meta
    cfg = load_config(replica)
    vector = None
    mode = "hybrid"
    try:
        from processors.catalog import make_embedder

        embedder = make_embedder(embedder_name, cfg.ollama_host)
        if embedder.dim != dim:
            raise ShoalError(f"{embedder_name} gives {embedder.dim} dimensions, index has {dim}")
        vector = embedder.embed([query])[0]
    except ShoalError as exc:
        log.info("keyword search only: %s", exc)
        mode = f"keyword (cannot embed the query with {embedder_name})"
    hits = index.search(query, vector, k)
    titles = {r.doc: r.title for r in views.list_docs(replica.store)}
    paths = {e.doc_id: e.path for e in files.file_entries(replica.store)}
    return {
        "query": query,
        "mode": mode,
        "embedder": embedder_name,
        "hits": [
            {
                "doc": hit.doc_id.hex(),
                "title": titles.get(hit.doc_id) or paths.get(hit.doc_id, ""),
                "snippet": hit.snippet,
                "score": float(hit.score),
            }
            for hit in hits
        ],
    }


def rebuild(replica: Replica) -> int:
    """Drop the processors' derived state and fold the whole log again."""
    return Derived(replica.engine, index_dir(replica)).rebuild()
