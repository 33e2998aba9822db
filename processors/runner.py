"""The thin runner: from the fold of the log to claims, tool runs and results.

One pass (:meth:`Runner.step`): fold new records, advertise this replica's capabilities if
they changed, list the jobs the plan wants, claim a few of those this replica may take,
wait ``settle_s`` so that concurrent claims from other replicas arrive, then run the jobs
the claim rule says we hold. Tools run in one worker thread (``OMP_NUM_THREADS=1``: two
threads are several times slower on small machines), never on the event loop; their data is
read on the loop first, and the result is appended on the loop after. A long job renews its
lease while it runs.

Before appending a result the runner folds again and stands down if someone else's result
exists or someone else took the job over: the result would be the same work twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from engine import file_content
from engine.engine import Engine
from eventlog.envelope import MAX_EVENT_BYTES
from eventlog.errors import NotFoundError, ShoalError
from eventlog.payload import encode_payload
from processors import jobs
from processors.catalog import FileSource, Processor, Source, text_hash
from processors.derived import Derived
from processors.errors import ExtractError, ModelUnavailableError, UnsupportedError
from processors.jobs import Claimed, JobKey, JobState, Policy

log = logging.getLogger("shoal.processors")

RESULT_MARGIN: Final = 64 * 1024
"""Room left in an event for the envelope around a result payload."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Job:
    """A job the plan wants, with what it reads and its state on this replica now."""

    key: JobKey
    need: str
    source: Source
    state: JobState


@dataclass
class Settings:
    """How this replica runs processors (from config.toml / ``shoal serve --processors``)."""

    caps: frozenset[str] = frozenset()
    policy: Policy = field(default_factory=Policy)
    settle_s: float = 1.0
    """Wait between claiming and working, so concurrent claims are seen and settled."""
    batch: int = 4
    """Jobs claimed per pass: leaves the rest of the queue to other capable replicas."""
    poll_s: float = 2.0


@dataclass(frozen=True, slots=True)
class Outcome:
    key: JobKey
    status: str
    """``done``, ``failed`` (retry later), ``failed permanently``, ``stood down``, ``skipped``."""
    detail: str = ""


@dataclass
class _Work:
    job: Job
    processor: Processor
    data: bytes | str


class Runner:
    """Runs this replica's share of the vault's processor jobs."""

    def __init__(
        self,
        engine: Engine,
        derived: Derived,
        processors: Sequence[Processor],
        settings: Settings,
        *,
        clock: Callable[[], int] = now_ms,
        on_model_unavailable: Callable[[], None] | None = None,
    ) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self.engine = engine
        self.derived = derived
        self.processors = {p.name: p for p in processors}
        self.settings = settings
        self.clock = clock
        self.on_model_unavailable = on_model_unavailable
        self._pool: ThreadPoolExecutor | None = None

    @property
    def me(self) -> bytes:
        return self.engine.me

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # --- what there is to do --------------------------------------------------------------------

    def advertise(self) -> bool:
        """Append ``replica.caps`` if what we offer differs from what we last advertised."""
        self.derived.fold()
        current = self.derived.caps().get(self.me)
        offer = self.settings.caps
        if current == offer or (current is None and not offer):
            return False
        self.engine.append_record(jobs.caps_payload(offer))
        self.derived.fold()
        return True

    def jobs(self, now: int | None = None) -> list[Job]:
        """Every job the plan wants for the current sources, with its state."""
        now = self.clock() if now is None else now
        extract = self.processors.get("extract")
        wanted: list[tuple[JobKey, str, Source]] = []
        for source in self.derived.sources(extract.version if extract else None):
            for processor in self.processors.values():
                need = processor.need(source)
                if need is not None:
                    wanted.append((processor.key(source), need, source))
        records = self.derived.records([key for key, _, _ in wanted])
        advertised = self.derived.caps()
        # What we can do ourselves counts even if another process of this replica (a `serve`
        # offering nothing, say) advertised for us last.
        offered = set(self.settings.caps).union(*advertised.values())
        return [
            Job(
                key,
                need,
                source,
                jobs.job_state(
                    records.get(key, []),
                    need=need,
                    offered=offered,
                    now_ms=now,
                    policy=self.settings.policy,
                ),
            )
            for key, need, source in wanted
        ]

    def claimable(self, found: Iterable[Job], now: int) -> list[Job]:
        mine = [j for j in found if jobs.may_claim(j.state, self.settings.caps, now)]
        order = {k: i for i, k in enumerate(jobs.claim_order(self.me, [j.key for j in mine]))}
        return sorted(mine, key=lambda j: order[j.key])

    def held(self, found: Iterable[Job]) -> list[Job]:
        """Jobs whose live lease is ours (claimed this pass, or before a restart)."""
        return [j for j in found if isinstance(j.state, Claimed) and j.state.by == self.me]

    def claim(self, chosen: Iterable[Job]) -> list[JobKey]:
        claimed = []
        for job in chosen:
            until = self.clock() + self.settings.policy.lease_ms
            self.engine.append_record(jobs.claim_payload(job.key, until))
            claimed.append(job.key)
        self.derived.fold()
        return claimed

    def pending_for_me(self, now: int) -> tuple[int, int | None]:
        """(jobs we may claim now or hold, earliest later time we may claim one) — our share."""
        found = self.jobs(now)
        ready = len(self.claimable(found, now)) + len(self.held(found))
        later = [
            j.state.not_before_ms
            for j in found
            if isinstance(j.state, jobs.Claimable)
            and j.state.need in self.settings.caps
            and j.state.not_before_ms > now
        ]
        return ready, min(later) if later else None

    # --- doing it -------------------------------------------------------------------------------

    def _prepare(self, job: Job) -> _Work | None:
        """Read a held job's input on the loop thread; None if it changed under us."""
        processor = self.processors[job.key.processor]
        source = job.source
        try:
            data: bytes | str
            if isinstance(source, FileSource):
                data = file_content.current_bytes(self.engine, source.doc)
            else:
                data = self.derived.source_text(source)
                if text_hash(data) != source.text_hash:
                    return None  # edited since: a new job with the new input replaces this one
        except NotFoundError as exc:
            log.info("job %s: input not available: %s", job.key.short(), exc)
            return None
        return _Work(job, processor, data)

    @staticmethod
    def _execute(work: _Work) -> tuple[str, Any]:
        """Run the tool (worker thread). Returns ("ok", output) or (failure kind, reason)."""
        try:
            return "ok", work.processor.run(work.data, work.job.source)
        except (UnsupportedError, ExtractError) as exc:
            return "permanent", str(exc)
        except ModelUnavailableError as exc:
            return "model", str(exc)
        except ShoalError as exc:
            return "retry", str(exc)
        except Exception as exc:  # a tool's own bug must fail this job, not the runner
            log.exception("job %s crashed", work.job.key.short())
            return "retry", f"{type(exc).__name__}: {exc}"

    def _finish(self, work: _Work, kind: str, value: Any) -> Outcome:
        """Append the result or the failure, unless the job is no longer ours."""
        key = work.job.key
        self.derived.fold()
        records = self.derived.job_records(key)
        w = jobs.walk(records)
        if w.result is not None:
            return Outcome(key, "stood down", "a result already exists")
        if w.holder is not None and w.holder.author != self.me:
            return Outcome(key, "stood down", "taken over by another replica")
        if kind == "ok":
            payload = jobs.result_payload(key, value)
            size = len(encode_payload(payload))
            if size > MAX_EVENT_BYTES - RESULT_MARGIN:
                kind, value = "permanent", f"result of {size} bytes is too large for an event"
            else:
                self.engine.append_record(payload)
                self.derived.fold()
                return Outcome(key, "done")
        if kind == "model" and self.on_model_unavailable is not None:
            self.on_model_unavailable()
        permanent = kind == "permanent"
        self.engine.append_record(jobs.fail_payload(key, str(value), permanent=permanent))
        self.derived.fold()
        return Outcome(key, "failed permanently" if permanent else "failed", str(value))

    def run_held_sync(self, held: Iterable[Job]) -> list[Outcome]:
        """Run held jobs in the calling thread (``shoal process`` tests, benchmarks)."""
        outcomes = []
        for job in held:
            work = self._prepare(job)
            if work is None:
                outcomes.append(Outcome(job.key, "skipped", "input changed or missing"))
                continue
            outcomes.append(self._finish(work, *self._execute(work)))
        return outcomes

    async def run_held(self, held: Iterable[Job]) -> list[Outcome]:
        """Run held jobs one at a time in the worker thread, renewing leases as they run."""
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="shoal-processor")
        outcomes = []
        for job in held:
            work = self._prepare(job)
            if work is None:
                outcomes.append(Outcome(job.key, "skipped", "input changed or missing"))
                continue
            future = loop.run_in_executor(self._pool, self._execute, work)
            renew_every = max(0.05, self.settings.policy.lease_ms / 3000)
            while True:
                try:
                    kind, value = await asyncio.wait_for(asyncio.shield(future), renew_every)
                    break
                except TimeoutError:
                    self._renew(job.key)
            outcomes.append(self._finish(work, kind, value))
        return outcomes

    def _renew(self, key: JobKey) -> None:
        self.derived.fold()
        if jobs.holds(self.derived.job_records(key), self.me, self.clock()):
            until = self.clock() + self.settings.policy.lease_ms
            self.engine.append_record(jobs.claim_payload(key, until))

    # --- passes -----------------------------------------------------------------------------------

    async def step(self) -> list[Outcome]:
        """One pass: claim a batch (after advertising), settle, run what we hold."""
        self.advertise()
        if not self.settings.caps:
            return []  # folding kept the derived state current; nothing for us to run
        now = self.clock()
        found = self.jobs(now)
        fresh = self.claimable(found, now)[: self.settings.batch]
        if fresh:
            self.claim(fresh)
            await asyncio.sleep(self.settings.settle_s)
            self.derived.fold()
            found = self.jobs()
        held = self.held(found)
        return await self.run_held(held) if held else []

    async def drain(self, *, wait_for_backoff: bool = True) -> list[Outcome]:
        """Run passes until this replica's share of the queue is done (``shoal process``).

        Our share: jobs we may claim now or hold. With ``wait_for_backoff`` the runner also
        waits for failed jobs of ours to come off their backoff, so it returns only when
        every job it can do is done, failed for good, or held by another replica.
        """
        outcomes: list[Outcome] = []
        while True:
            outcomes += await self.step()
            ready, later = self.pending_for_me(self.clock())
            if ready:
                continue
            if later is None or not wait_for_backoff:
                return outcomes
            await asyncio.sleep(max(0.0, (later - self.clock()) / 1000))

    async def run_forever(self, stop: asyncio.Event, *, refresh: Callable[[], None]) -> None:
        """``shoal serve``: passes whenever the vault changes (or every ``poll_s``)."""
        wakeup = asyncio.Event()
        self.engine.add_wakeup(wakeup)
        try:
            while not stop.is_set():
                refresh()
                try:
                    outcomes = await self.step()
                except ShoalError as exc:
                    log.warning("processing pass failed: %s", exc)
                    outcomes = []
                for outcome in outcomes:
                    log.info("job %s: %s %s", outcome.key.short(), outcome.status, outcome.detail)
                if outcomes:
                    continue
                wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(stop.wait(), wakeup.wait()), self.settings.poll_s)
        finally:
            self.engine.remove_wakeup(wakeup)
            self.close()


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
