"""The real ``ollama`` client against the fake Ollama server, and shoal's modules over it.

Covers what the issue asks of an Ollama replica: listing models, chat and generate (streamed
and not), embeddings, a 404 for a model that is not pulled, a server that is down or too slow
(all ``ModelUnavailableError``), and the map-reduce summary of a long text.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import ollama
import pytest

from processors.caps import detect_caps
from processors.chunking import chunk_text
from processors.embed import OllamaEmbedder
from processors.errors import ModelUnavailableError, ProcessingError
from processors.summarize import answer, summarize
from tests.corpus import DOCUMENTS
from tests.fake_ollama import FakeOllama, summary_of

REPO = Path(__file__).resolve().parent.parent
CHAT_MODEL = "llama3.2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def client(fake_ollama: FakeOllama) -> Iterator[ollama.Client]:
    with closing(ollama.Client(host=fake_ollama.url, timeout=30)) as c:
        yield c


# --- the fake speaks the API the real client expects ---------------------------------------


def test_list_models(client: ollama.Client) -> None:
    names = {m.model for m in client.list().models}
    assert {"llama3.2:latest", "nomic-embed-text:latest"} <= names


def test_chat_streams_by_default_and_ends_with_done(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "First thing. More.\n\nSecond thing! Rest."}]
    parts = list(client.chat(model=CHAT_MODEL, messages=messages, stream=True))
    assert len(parts) > 2
    assert all(not p.done for p in parts[:-1])
    last = parts[-1]
    assert last.done and last.done_reason == "stop"
    assert last.eval_count == len(parts) - 1 and (last.total_duration or 0) > 0
    text = "".join(p.message.content or "" for p in parts)
    assert text == "Summary: First thing. Second thing!"


def test_chat_and_generate_without_streaming(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Alpha beta. Gamma."}]
    reply = client.chat(model=CHAT_MODEL, messages=messages, stream=False)
    assert reply.message.role == "assistant"
    assert reply.message.content == "Summary: Alpha beta."
    assert reply.done and reply.model == CHAT_MODEL
    generated = client.generate(model=CHAT_MODEL, prompt="One. Two.", stream=False)
    assert generated.response == "Summary: One."
    streamed = "".join(
        p.response or ""
        for p in client.generate(model=CHAT_MODEL, prompt="Three. Four.", stream=True)
    )
    assert streamed == "Summary: Three."


def test_embed_accepts_a_string_or_a_list(client: ollama.Client) -> None:
    one = client.embed(model="nomic-embed-text", input="volcanic soil")
    many = client.embed(model="nomic-embed-text", input=["volcanic soil", "fertile soils"])
    assert len(one.embeddings) == 1 and len(many.embeddings) == 2
    assert one.embeddings[0] == many.embeddings[0]
    assert len(one.embeddings[0]) == 768
    a, b = (np.array(v) for v in many.embeddings)
    unrelated = np.array(client.embed(model="nomic-embed-text", input="jazz clubs").embeddings[0])
    assert float(a @ b) > float(a @ unrelated)  # sharing a (stemmed) word makes texts close


def test_unknown_model_is_a_404_like_ollama(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="mistral", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert caught.value.status_code == 404
    assert caught.value.error == 'model "mistral" not found, try pulling it first'


def test_runs_as_a_process_for_subprocess_tests() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_ollama", "--port", str(port), "--model", "tiny=chat"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == f"fake-ollama listening on http://127.0.0.1:{port}"
        with closing(ollama.Client(host=f"http://127.0.0.1:{port}", timeout=30)) as c:
            assert [m.model for m in c.list().models] == ["tiny:latest"]
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


# --- shoal's modules over it --------------------------------------------------------------


def test_embedder_vectors_are_unit_float32(fake_ollama: FakeOllama) -> None:
    with OllamaEmbedder("nomic-embed-text", host=fake_ollama.url) as embedder:
        texts = [f"text number {i} about {w}" for i, w in enumerate("abcdefghij" * 8)]
        vectors = embedder.embed(texts)
        assert embedder.name == "ollama:nomic-embed-text"
        assert vectors.dtype == np.float32 and vectors.shape == (80, embedder.dim)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert embedder.embed([]).shape == (0, 768)
    assert len(fake_ollama.calls("/api/embed")) == 2  # batched: 64 + 16


def test_model_not_pulled_is_model_unavailable(fake_ollama: FakeOllama) -> None:
    with (
        OllamaEmbedder("mxbai-embed-large", host=fake_ollama.url) as embedder,
        pytest.raises(ModelUnavailableError, match="does not serve model 'mxbai-embed-large'"),
    ):
        embedder.embed(["x"])
    with pytest.raises(ModelUnavailableError, match="does not serve model 'mistral'"):
        summarize("Some text.", model="mistral", host=fake_ollama.url)


def test_ollama_down_is_model_unavailable() -> None:
    host = f"http://127.0.0.1:{free_port()}"
    with (
        OllamaEmbedder("nomic-embed-text", host=host) as embedder,
        pytest.raises(ModelUnavailableError, match=f"not reachable at {host}"),
    ):
        embedder.embed(["x"])
    with pytest.raises(ModelUnavailableError, match="not reachable"):
        summarize("Some text.", model=CHAT_MODEL, host=host)
    caps = detect_caps(ollama_host=host, timeout=1.0)
    assert caps["llm"] == []
    assert not [name for name in caps["embed"] if str(name).startswith("ollama:")]  # type: ignore[attr-defined]


def test_slow_ollama_is_model_unavailable() -> None:
    with FakeOllama(delay=3.0) as slow:
        with pytest.raises(ModelUnavailableError, match="did not answer in time"):
            summarize("Some text.", model=CHAT_MODEL, host=slow.url, timeout=0.5)
        with (
            OllamaEmbedder("nomic-embed-text", host=slow.url, timeout=0.5) as embedder,
            pytest.raises(ModelUnavailableError, match="did not answer in time"),
        ):
            embedder.embed(["x"])


def test_embedding_model_cannot_chat(fake_ollama: FakeOllama) -> None:
    with pytest.raises(ModelUnavailableError, match="answered 400"):
        summarize("Some text.", model="nomic-embed-text", host=fake_ollama.url)


def test_short_text_is_summarized_in_one_call(fake_ollama: FakeOllama) -> None:
    text = DOCUMENTS["tides"]
    summary = summarize(text, model=CHAT_MODEL, host=fake_ollama.url, prompt="In one line.")
    assert summary == summary_of(text)
    (call,) = fake_ollama.calls("/api/chat")
    assert call["messages"][0] == {"role": "system", "content": "In one line."}
    assert call["stream"] is False


def test_long_text_is_summarized_map_reduce(fake_ollama: FakeOllama) -> None:
    """One chat per chunk; the partial summaries, re-chunked, again until one part is left."""
    text = "\n\n".join(DOCUMENTS.values())  # ~3,000 characters, 11 paragraphs
    summary = summarize(text, model=CHAT_MODEL, host=fake_ollama.url, chunk_chars=1000)
    asked = [c["messages"][-1]["content"] for c in fake_ollama.calls("/api/chat")]
    first_round = chunk_text(text, max_chars=1000, overlap=0)
    assert len(first_round) >= 3
    assert asked[: len(first_round)] == first_round
    expected, parts = [], first_round
    while len(parts) > 1:
        expected += parts
        parts = chunk_text("\n\n".join(map(summary_of, parts)), max_chars=1000, overlap=0)
    expected += parts
    assert asked == expected
    assert len(asked) > len(first_round) + 1, "the fake's long summaries need a second round"
    assert summary == summary_of(expected[-1])


def test_empty_text_cannot_be_summarized(fake_ollama: FakeOllama) -> None:
    with pytest.raises(ProcessingError, match="no text"):
        summarize("  \n ", model=CHAT_MODEL, host=fake_ollama.url)
    assert fake_ollama.calls("/api/chat") == []


def test_answer_cites_document_ids(fake_ollama: FakeOllama) -> None:
    contexts = [("a1b2c3", DOCUMENTS["bees"]), ("d4e5f6", DOCUMENTS["tides"])]
    reply = answer("What moves the tides?", contexts, model=CHAT_MODEL, host=fake_ollama.url)
    assert "[a1b2c3]" in reply and "[d4e5f6]" in reply
    assert (
        "Question: What moves the tides?"
        in fake_ollama.calls("/api/chat")[0]["messages"][-1]["content"]
    )


def test_caps_list_ollama_models_by_kind(fake_ollama: FakeOllama) -> None:
    caps = detect_caps(ollama_host=fake_ollama.url)
    assert caps["llm"] == ["llama3.2:latest"]
    embed = caps["embed"]
    assert isinstance(embed, list)
    assert "ollama:nomic-embed-text:latest" in embed and "ollama:all-minilm:latest" in embed
    extract = caps["extract"]
    assert isinstance(extract, list) and "application/pdf" in extract and "text/plain" in extract
    assert isinstance(caps["ocr"], bool)
