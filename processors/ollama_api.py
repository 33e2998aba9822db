"""The one place shoal talks to Ollama: a client and the translation of its failures.

Every failure becomes ``ModelUnavailableError`` with a one-line reason the job table can show:
the server is down, too slow, or does not serve the model. The host is ``OLLAMA_HOST`` unless
given, as with the ``ollama`` command itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import httpx
import ollama

from processors.errors import ModelUnavailableError

DEFAULT_HOST: Final = "http://127.0.0.1:11434"


def host_of(host: str | None) -> str:
    """The Ollama address used for ``host`` (None: ``$OLLAMA_HOST``, else the default port)."""
    return host or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST


def client(host: str | None, timeout: float | None) -> ollama.Client:
    return ollama.Client(host=host_of(host), timeout=timeout)


@contextmanager
def ollama_errors(host: str | None, model: str | None = None) -> Iterator[None]:
    """Turn the client's exceptions into ``ModelUnavailableError`` naming host and model."""
    where = host_of(host)
    try:
        yield
    except ollama.ResponseError as exc:
        if exc.status_code == 404 and model is not None:
            reason = f"Ollama at {where} does not serve model {model!r} (try `ollama pull {model}`)"
        else:
            reason = f"Ollama at {where} answered {exc.status_code}: {exc.error}"
        raise ModelUnavailableError(reason) from exc
    except httpx.TimeoutException as exc:
        raise ModelUnavailableError(f"Ollama at {where} did not answer in time") from exc
    except (ConnectionError, httpx.HTTPError) as exc:
        raise ModelUnavailableError(f"Ollama is not reachable at {where}") from exc
