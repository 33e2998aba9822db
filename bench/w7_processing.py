"""W7 processing: extraction, OCR and embedding through shoal against the bare tools.

Each part runs the same generated inputs two ways, interleaved item by item (alternating which
goes first), so a slow second of the shared machine costs both sides alike:

* extraction: DOCX, HTML and text PDFs built from the test corpus, through
  ``processors.extract.extract`` against docling's ``DocumentConverter`` called directly with
  the same options (``NativePdfPipeline`` for PDFs) and ``export_to_markdown``;
* OCR: PNG pages of rendered text (DejaVu), through ``extract`` against tesserocr's
  ``PyTessBaseAPI`` on the decoded image;
* embedding: chunks of the corpus, through ``local_embedder().embed`` against
  sentence-transformers' ``SentenceTransformer.encode`` of the same packaged model, 32 texts
  per call on both sides.

The figure is the throughput ratio shoal / bare (goal >= 0.8).

Then search: ``SearchIndex.search`` p50 latency over 100,000 chunks (goal < 5 ms), against
the bare FTS5 ``MATCH ... ORDER BY rank`` plus usearch ``search`` it is made of. Embedding
100k chunks with the real model would take most of an hour here, so the index holds *random
unit vectors* (the graph's size and dimension, 384, are what cost time, not their meaning).
The texts must be real for FTS5 to rank realistic posting lists: they are the Python
standard library's sources (31 MB of English docstrings, comments and code, a Zipfian
vocabulary) cut by ``chunk_text`` into 300-character chunks, 10 per document. Queries are
the corpus queries plus ten about the standard library's subjects, each with a random unit
query vector.

    .venv/bin/python -m bench.w7_processing [--quick] [--chunks N]
"""

from __future__ import annotations

import io
import os
import random
import re
import sqlite3
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import median, now, parser, progress, report, verdict
from processors.chunking import chunk_text
from processors.embed import local_embedder, local_model_path
from processors.extract import extract
from processors.ocr import LANGUAGE, tessdata_dir
from processors.search_index import STOP_WORDS, SearchIndex
from tests.corpus import DOCUMENTS, QUERIES

NAME = "w7_processing"
RATIO_GOAL = 0.8
SEARCH_GOAL_MS = 5.0
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
FULL = {"docs": 60, "images": 12, "chunks_embedded": 384, "index_chunks": 100_000}
QUICK = {"docs": 15, "images": 4, "chunks_embedded": 96, "index_chunks": 10_000}
SEARCH_RUNS = 300
EMBED_BATCH = 32

Input = tuple[bytes, str, str]  # data, mime, name


# --- inputs -------------------------------------------------------------------------------


def paragraphs() -> list[str]:
    return [p for text in DOCUMENTS.values() for p in text.split("\n\n")]


def make_documents(n: int) -> list[Input]:
    """DOCX, HTML and text PDFs in turn, each with a few corpus paragraphs."""
    import docx
    from fpdf import FPDF

    rng = random.Random(7)
    inputs: list[Input] = []
    for i in range(n):
        body = rng.sample(paragraphs(), 4)
        if i % 3 == 0:
            document = docx.Document()
            document.add_heading(f"Report {i}", 1)
            for paragraph in body:
                document.add_paragraph(paragraph)
            buffer = io.BytesIO()
            document.save(buffer)
            inputs.append((buffer.getvalue(), DOCX, f"r{i}.docx"))
        elif i % 3 == 1:
            html = f"<html><body><h1>Report {i}</h1>" + "".join(f"<p>{p}</p>" for p in body)
            inputs.append(((html + "</body></html>").encode(), "text/html", f"r{i}.html"))
        else:
            pdf = FPDF()
            pdf.set_font("helvetica", size=11)
            for paragraph in body:
                pdf.add_page()
                pdf.multi_cell(0, 7, paragraph.replace("\u2019", "'"))
            inputs.append((bytes(pdf.output()), "application/pdf", f"r{i}.pdf"))
    return inputs


def make_images(n: int) -> list[Input]:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 30)
    sentences = [s for p in paragraphs() for s in re.split(r"(?<=\.) ", p)]
    inputs: list[Input] = []
    for i in range(n):
        lines = [sentences[(i * 5 + j) % len(sentences)][:90] for j in range(5)]
        image = Image.new("L", (1700, 420), 255)
        ImageDraw.Draw(image).multiline_text((30, 30), "\n".join(lines), font=font, fill=0)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        inputs.append((buffer.getvalue(), "image/png", f"page{i}.png"))
    return inputs


# --- the bare tools -----------------------------------------------------------------------


def bare_docling() -> Callable[[Input], str]:
    from docling.datamodel.base_models import DocumentStream, InputFormat
    from docling.datamodel.pipeline_options import NativePdfPipelineOptions
    from docling.document_converter import DocumentConverter, NativePdfFormatOption

    options = NativePdfPipelineOptions(
        generate_page_images=False, generate_picture_images=False, parser_threads=1
    )
    converter = DocumentConverter(
        format_options={InputFormat.PDF: NativePdfFormatOption(pipeline_options=options)}
    )

    def convert(item: Input) -> str:
        data, _, name = item
        stream = DocumentStream(name=name, stream=io.BytesIO(data))
        return str(converter.convert(stream).document.export_to_markdown())

    return convert


def bare_tesseract() -> Callable[[Input], str]:
    import tesserocr
    from PIL import Image

    api = tesserocr.PyTessBaseAPI(path=f"{tessdata_dir()}/", lang=LANGUAGE)

    def read(item: Input) -> str:
        api.SetImage(Image.open(io.BytesIO(item[0])))
        return str(api.GetUTF8Text())

    return read


def bare_sentence_transformers() -> Callable[[list[str]], Any]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(local_model_path()), device="cpu")

    def encode(texts: list[str]) -> Any:
        return model.encode(
            texts, batch_size=EMBED_BATCH, normalize_embeddings=True, convert_to_numpy=True
        )

    return encode


# --- interleaved timing -------------------------------------------------------------------


def interleaved(
    items: list[Any], ours: Callable[[Any], object], bare: Callable[[Any], object], what: str
) -> tuple[float, float]:
    """Total seconds (ours, bare) over the items, after one untimed warm-up of each side."""
    ours(items[0])
    bare(items[0])
    ours_s = bare_s = 0.0
    for k, item in enumerate(items):
        for side in (0, 1) if k % 2 == 0 else (1, 0):
            start = now()
            (ours if side == 0 else bare)(item)
            elapsed = now() - start
            if side == 0:
                ours_s += elapsed
            else:
                bare_s += elapsed
        if (k + 1) % 10 == 0:
            progress(f"{what}: {k + 1}/{len(items)}")
    return ours_s, bare_s


def shoal_extract(item: Input) -> str:
    data, mime, name = item
    return extract(data, mime=mime, name=name).text


# --- search -------------------------------------------------------------------------------


STDLIB_QUERIES = [
    "parse a date string with a timezone",
    "open a socket connection and read bytes",
    "compress a file with gzip",
    "sort a list of dictionaries by key",
    "thread safe queue for worker threads",
    "escape special characters in a regular expression",
    "temporary directory removed on exit",
    "decode base64 email attachment",
    "unicode normalization of file names",
    "retry after a timeout error",
]


def real_chunks(n: int) -> Iterator[str]:
    """``n`` chunks of real text: the standard library's sources, cycled if they run out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    produced = 0
    while True:
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")
            for chunk in chunk_text(text, max_chars=300, overlap=0):
                yield chunk
                produced += 1
                if produced == n:
                    return


def build_index(root: Path, n: int, dim: int) -> tuple[sqlite3.Connection, SearchIndex]:
    rng = np.random.default_rng(11)
    conn = sqlite3.connect(root / "vault.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    index = SearchIndex(conn, root / "index", dim)
    per_doc = 10
    texts = real_chunks(n)
    conn.execute("BEGIN")
    for d in range(n // per_doc):
        chunks = [next(texts) for _ in range(per_doc)]
        vectors = rng.normal(size=(per_doc, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index.upsert(d.to_bytes(16, "big"), chunks, vectors)
        if (d + 1) % 1000 == 0:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
            progress(f"index: {(d + 1) * per_doc:,}/{n:,} chunks")
    conn.execute("COMMIT")
    return conn, index


def naive_expression(query: str) -> str:
    """The plain way: an OR of the query's words (without function words), ranked by bm25."""
    words = [w for w in re.findall(r"\w+", query.lower()) if w not in STOP_WORDS]
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words))


def search_latencies(
    conn: sqlite3.Connection, index: SearchIndex, dim: int
) -> tuple[list[float], list[float], list[float]]:
    """Per-query seconds: ``SearchIndex.search``; a plain bm25 OR query; usearch alone."""
    rng = np.random.default_rng(5)
    queries = list(QUERIES) + STDLIB_QUERIES
    vectors = rng.normal(size=(SEARCH_RUNS, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    graph = index._vectors
    ours, fts, graph_s = [], [], []
    for i in range(SEARCH_RUNS):
        query, vector = queries[i % len(queries)], vectors[i]
        start = now()
        index.search(query, vector, k=10)
        ours.append(now() - start)
        start = now()
        conn.execute(
            "SELECT rowid FROM search_fts WHERE search_fts MATCH ? ORDER BY rank LIMIT 40",
            (naive_expression(query),),
        ).fetchall()
        fts.append(now() - start)
        start = now()
        graph.search(vector, 40, threads=1)
        graph_s.append(now() - start)
    return ours, fts, graph_s


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = parser("W7 processing: extraction, OCR, embedding vs the bare tools; search latency")
    p.add_argument("--chunks", type=int, help="chunks in the search index (default 100,000)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: one thread is fastest
    size = dict(QUICK if args.quick else FULL)
    if args.chunks:
        size["index_chunks"] = args.chunks

    progress("generating inputs")
    documents = make_documents(size["docs"])
    images = make_images(size["images"])
    texts = [c for t in DOCUMENTS.values() for c in chunk_text(t, max_chars=300, overlap=50)]
    chunks = [texts[i % len(texts)] for i in range(size["chunks_embedded"])]
    batches = [chunks[i : i + EMBED_BATCH] for i in range(0, len(chunks), EMBED_BATCH)]

    progress("loading docling, tesseract and the model")
    start = now()
    extract(b"warm", mime="text/markdown", name="warm.md")  # imports docling (torch with it)
    docling_import_s = now() - start
    bare_convert, bare_ocr = bare_docling(), bare_tesseract()
    bare_encode = bare_sentence_transformers()
    embedder = local_embedder()

    ex_ours, ex_bare = interleaved(documents, shoal_extract, bare_convert, "extraction")
    ocr_ours, ocr_bare = interleaved(images, shoal_extract, bare_ocr, "OCR")
    em_ours, em_bare = interleaved(batches, embedder.embed, bare_encode, "embedding")
    ratios = {"extract": ex_bare / ex_ours, "ocr": ocr_bare / ocr_ours, "embed": em_bare / em_ours}

    n, dim = size["index_chunks"], embedder.dim
    with tempfile.TemporaryDirectory(prefix="shoal-w7-") as tmp:
        progress(f"building a {n:,}-chunk index (random unit vectors, standard-library text)")
        start = now()
        conn, index = build_index(Path(tmp), n, dim)
        build_s = now() - start
        ours_lat, fts_lat, graph_lat = search_latencies(conn, index, dim)
        conn.close()
    p50, fts_p50, graph_p50 = (median(t) * 1e3 for t in (ours_lat, fts_lat, graph_lat))
    p99 = sorted(ours_lat)[int(len(ours_lat) * 0.99) - 1] * 1e3

    met = {key: ratio >= RATIO_GOAL for key, ratio in ratios.items()}
    search_ok = p50 < SEARCH_GOAL_MS
    lines = [
        ("docling import (with torch)", f"{docling_import_s:.1f} s, once per process"),
        (
            f"extraction ({len(documents)} docx/html/pdf)",
            f"shoal {len(documents) / ex_ours:.1f}/s, docling {len(documents) / ex_bare:.1f}/s",
        ),
        (
            "  shoal / docling",
            f"{ratios['extract']:.2f} (goal >= {RATIO_GOAL}) -> {verdict(met['extract'])}",
        ),
        (
            f"OCR ({len(images)} PNG pages)",
            f"shoal {len(images) / ocr_ours:.2f}/s, tesserocr {len(images) / ocr_bare:.2f}/s",
        ),
        (
            "  shoal / tesserocr",
            f"{ratios['ocr']:.2f} (goal >= {RATIO_GOAL}) -> {verdict(met['ocr'])}",
        ),
        (
            f"embedding ({len(chunks)} chunks, local model)",
            f"shoal {len(chunks) / em_ours:.1f}/s, "
            f"sentence-transformers {len(chunks) / em_bare:.1f}/s",
        ),
        (
            "  shoal / sentence-transformers",
            f"{ratios['embed']:.2f} (goal >= {RATIO_GOAL}) -> {verdict(met['embed'])}",
        ),
        (f"index build ({n:,} chunks)", f"{build_s:.1f} s ({n / build_s:,.0f} chunks/s)"),
        ("search p50 / p99", f"{p50:.2f} ms / {p99:.2f} ms"),
        ("  plain FTS5 OR query / usearch p50", f"{fts_p50:.2f} ms / {graph_p50:.2f} ms"),
        ("  search p50", f"{p50:.2f} ms (goal < {SEARCH_GOAL_MS} ms) -> {verdict(search_ok)}"),
    ]
    report(
        NAME,
        "W7 processing (one thread, interleaved against the bare tools)",
        lines,
        {
            "quick": args.quick,
            "sizes": size,
            "ratios": ratios,
            "ratio_goal": RATIO_GOAL,
            "extract_per_s": {"shoal": len(documents) / ex_ours, "bare": len(documents) / ex_bare},
            "ocr_per_s": {"shoal": len(images) / ocr_ours, "bare": len(images) / ocr_bare},
            "embed_per_s": {"shoal": len(chunks) / em_ours, "bare": len(chunks) / em_bare},
            "docling_import_s": docling_import_s,
            "index_build_s": build_s,
            "search_p50_ms": p50,
            "search_p99_ms": p99,
            "bare_fts_p50_ms": fts_p50,
            "bare_usearch_p50_ms": graph_p50,
            "search_goal_ms": SEARCH_GOAL_MS,
            "met": all(met.values()) and search_ok,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
