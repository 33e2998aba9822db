"""An Ollama HTTP API server for tests: the real ``ollama`` client talks to it over loopback.

The machine has no Ollama, so this speaks the parts of its API shoal uses, with the real
field names and behaviour: ``GET /api/tags``, ``GET /api/version``, ``POST /api/chat`` and
``POST /api/generate`` (NDJSON streaming unless ``"stream": false``, as the real server
defaults), ``POST /api/embed`` (``input`` a string or a list) and the older
``POST /api/embeddings``; an unknown model gets 404 ``model "x" not found, try pulling it
first`` and an embedding-only model asked to chat gets 400, as from Ollama.

Outputs are deterministic functions of the input, so tests can predict them:

* embeddings: a hashed bag of words (each lower-cased, crudely stemmed word that is not a
  stop word adds ±1 to a few coordinates chosen by its BLAKE2b hash), L2-normalised: texts
  sharing words are close;
* chat and generate: ``"Summary: "`` followed by the first sentence of each paragraph of the
  last user message (or prompt), so an answer can be traced back to what was asked.

``delay`` (seconds, before each response) plays a slow Ollama. Every request is recorded in
``requests`` as ``(path, json body)`` for tests that count calls.

In-process: ``with FakeOllama() as server: server.url``. As a process:
``python -m tests.fake_ollama --port N [--delay S]`` prints ``fake-ollama listening on URL``
once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

CHAT = "chat"
EMBED = "embed"

DEFAULT_MODELS: dict[str, tuple[str, int]] = {
    # name (with tag) -> (kind, embedding dimension)
    "llama3.2:latest": (CHAT, 3072),
    "nomic-embed-text:latest": (EMBED, 768),
    "all-minilm:latest": (EMBED, 384),
}

_WORD = re.compile(r"[0-9a-z]+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"^.*?[.!?](?=\s|$)", re.DOTALL)
_HASHES_PER_WORD = 2
_STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "do",
        "does",
        "each",
        "for",
        "from",
        "has",
        "have",
        "how",
        "in",
        "into",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "other",
        "over",
        "such",
        "that",
        "the",
        "their",
        "them",
        "there",
        "these",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "why",
        "will",
        "with",
    ]
)
_SUFFIXES = ("ing", "es", "ed", "s")


def _stem(word: str) -> str:
    """A crude stemmer, so that "volcano" and "volcanoes" land on the same coordinates."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def bag_of_words_vector(text: str, dim: int) -> list[float]:
    """A unit vector for ``text``: each content word adds ±1 at positions picked by its hash."""
    vector = [0.0] * dim
    for word in _WORD.findall(text.lower()):
        if word in _STOP_WORDS:
            continue
        digest = hashlib.blake2b(_stem(word).encode(), digest_size=8 * _HASHES_PER_WORD).digest()
        for i in range(_HASHES_PER_WORD):
            value = int.from_bytes(digest[8 * i : 8 * i + 8], "big")
            vector[value % dim] += 1.0 if (value >> 63) & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:
        vector[0], norm = 1.0, 1.0
    return [x / norm for x in vector]


def summary_of(text: str) -> str:
    """``Summary:`` and the first sentence of each paragraph: the fake model's whole answer."""
    firsts = []
    for raw in _PARAGRAPH_BREAK.split(text):
        paragraph = " ".join(raw.split())
        if paragraph:
            match = _SENTENCE.match(paragraph)
            firsts.append(match.group(0) if match else paragraph)
    return "Summary: " + " ".join(firsts)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _tokens(text: str) -> Iterator[str]:
    """The answer in stream pieces: each word with the space that follows it."""
    yield from re.findall(r"\S+\s*", text)


@dataclass
class _Timing:
    started: float

    def durations(self, prompt_tokens: int, eval_tokens: int) -> dict[str, int]:
        total = max(1, int((time.perf_counter() - self.started) * 1e9))
        return {
            "total_duration": total,
            "load_duration": total // 10,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": total // 4,
            "eval_count": eval_tokens,
            "eval_duration": total // 2,
        }


class FakeOllama:
    """The server: an aiohttp app, runnable on a background thread or as the main program."""

    def __init__(
        self,
        models: dict[str, tuple[str, int]] | None = None,
        *,
        delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.models = dict(DEFAULT_MODELS if models is None else models)
        self.delay = delay
        self.host, self.port = host, port
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def calls(self, path: str) -> list[dict[str, Any]]:
        """The JSON bodies of the requests made to ``path`` so far, oldest first."""
        return [body for seen, body in list(self.requests) if seen == path]

    # --- the app ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_post("/api/embed", self._embed)
        app.router.add_post("/api/embeddings", self._embeddings)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and isinstance(server, asyncio.Server) and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- on a background thread (the pytest fixture) ----------------------------------------

    def __enter__(self) -> FakeOllama:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-ollama", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    # --- handlers ---------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"version": "0.12.0-fake"})

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(("/api/tags", {}))
        await self._pause()
        models = []
        for name, (kind, dim) in sorted(self.models.items()):
            family = name.split(":")[0].split("-")[0]
            models.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2025-01-01T00:00:00Z",
                    "size": dim * 1000,
                    "digest": hashlib.sha256(name.encode()).hexdigest(),
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "bert" if kind == EMBED else family,
                        "families": ["bert" if kind == EMBED else family],
                        "parameter_size": "137M" if kind == EMBED else "3.2B",
                        "quantization_level": "F16" if kind == EMBED else "Q4_K_M",
                    },
                }
            )
        return web.json_response({"models": models})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, error = await self._body(request, "/api/chat", needs_chat=True)
        if error is not None:
            return error
        messages = body.get("messages") or []
        asked = ""
        for message in messages:
            if isinstance(message, dict) and message.get("role") == "user":
                asked = str(message.get("content", ""))
        answer = summary_of(asked)
        return await self._respond(request, body, answer, prompt=asked, field="message")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body, error = await self._body(request, "/api/generate", needs_chat=True)
        if error is not None:
            return error
        prompt = str(body.get("prompt") or "")
        if not prompt:  # the real server loads the model and answers "done" with no text
            return web.json_response(
                {
                    "model": body["model"],
                    "created_at": _now(),
                    "response": "",
                    "done": True,
                    "done_reason": "load",
                }
            )
        return await self._respond(
            request, body, summary_of(prompt), prompt=prompt, field="response"
        )

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        body, error = await self._body(request, "/api/embed", needs_chat=False)
        if error is not None:
            return error
        raw = body.get("input", "")
        texts: Sequence[object] = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return _error(400, "invalid input type")
        timing = _Timing(time.perf_counter())
        dim = self._dim(body["model"])
        embeddings = [bag_of_words_vector(str(text), dim) for text in texts]
        words = sum(len(str(text).split()) for text in texts)
        durations = timing.durations(words, 0)
        return web.json_response(
            {
                "model": body["model"],
                "embeddings": embeddings,
                "total_duration": durations["total_duration"],
                "load_duration": durations["load_duration"],
                "prompt_eval_count": words,
            }
        )

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, error = await self._body(request, "/api/embeddings", needs_chat=False)
        if error is not None:
            return error
        vector = bag_of_words_vector(str(body.get("prompt", "")), self._dim(body["model"]))
        return web.json_response({"embedding": vector})

    # --- helpers ----------------------------------------------------------------------------

    async def _pause(self) -> None:
        if self.delay > 0:
            await asyncio.sleep(self.delay)

    def _resolve(self, name: str) -> str | None:
        for candidate in (name, f"{name}:latest"):
            if candidate in self.models:
                return candidate
        return None

    def _dim(self, model: str) -> int:
        resolved = self._resolve(model)
        return self.models[resolved][1] if resolved else 0

    async def _body(
        self, request: web.Request, path: str, *, needs_chat: bool
    ) -> tuple[dict[str, Any], web.Response | None]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}, _error(400, "invalid character in request body")
        if not isinstance(body, dict):
            return {}, _error(400, "json: cannot unmarshal into request")
        self.requests.append((path, body))
        await self._pause()
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return body, _error(400, "model is required")
        resolved = self._resolve(name)
        if resolved is None:
            return body, _error(404, f'model "{name}" not found, try pulling it first')
        if needs_chat and self.models[resolved][0] != CHAT:
            return body, _error(400, f'"{name}" does not support {path.rsplit("/", 1)[1]}')
        return body, None

    async def _respond(
        self,
        request: web.Request,
        body: dict[str, Any],
        answer: str,
        *,
        prompt: str,
        field: str,
    ) -> web.StreamResponse:
        """The answer as one JSON object, or streamed as NDJSON pieces then a final ``done``."""
        timing = _Timing(time.perf_counter())
        model = body["model"]
        pieces = list(_tokens(answer))
        prompt_tokens = len(prompt.split())

        def content(text: str) -> dict[str, Any]:
            if field == "message":
                return {"message": {"role": "assistant", "content": text}}
            return {"response": text}

        def final(text: str) -> dict[str, Any]:
            record: dict[str, Any] = {"model": model, "created_at": _now(), **content(text)}
            record.update(done=True, done_reason="stop")
            record.update(timing.durations(prompt_tokens, len(pieces)))
            if field == "response":
                record["context"] = [len(p) for p in pieces][:16]
            return record

        if body.get("stream", True) is False:
            return web.json_response(final(answer))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for piece in pieces:
            line = {"model": model, "created_at": _now(), **content(piece), "done": False}
            await response.write(json.dumps(line).encode() + b"\n")
        await response.write(json.dumps(final("")).encode() + b"\n")
        await response.write_eof()
        return response


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def models_from(names: Iterable[str]) -> dict[str, tuple[str, int]]:
    """``--model name[:tag]=chat|embed[:dim]`` arguments as a model table."""
    table: dict[str, tuple[str, int]] = {}
    for spec in names:
        name, _, kind_dim = spec.partition("=")
        kind, _, dim = kind_dim.partition(":")
        if ":" not in name:
            name += ":latest"
        table[name] = (kind or CHAT, int(dim or 768))
    return table


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="A fake Ollama HTTP API server for shoal's tests")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=11434)
    p.add_argument("--delay", type=float, default=0.0, help="seconds before each response")
    p.add_argument("--model", action="append", default=[], help="name=chat|embed[:dim]")
    args = p.parse_args(argv)
    server = FakeOllama(
        models_from(args.model) if args.model else None,
        delay=args.delay,
        host=args.host,
        port=args.port,
    )

    async def serve() -> None:
        await server.start()
        print(f"fake-ollama listening on {server.url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
