"""Text extraction: a file's bytes in, its text as markdown out (the ``extract`` processor).

Office documents, HTML and Markdown go through docling's declarative backends. A PDF is
looked at page by page with pypdfium2: pages with a text layer go through docling's
model-free ``NativePdfPipeline`` (or, when ``SHOAL_DOCLING_ARTIFACTS`` / ``artifacts`` points
at locally installed docling models, its layout pipeline, which recovers headings, reading
order and tables); pages without one are rendered and read by tesseract, as are images.
Docling's own layout and OCR models cannot be downloaded here, so they are never asked for.

docling is imported on first use: importing it costs seconds (it pulls in torch through its
ASR options), which a CLI that never extracts should not pay.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Final

from processors.errors import ExtractError, UnsupportedError
from processors.ocr import ocr_images

if TYPE_CHECKING:
    from PIL.Image import Image

EXTRACT_VERSION: Final = "1"
ARTIFACTS_ENV: Final = "SHOAL_DOCLING_ARTIFACTS"
OCR_DPI: Final = 300
"""Tesseract reads best at about 300 dpi; PDF pages are rendered at that resolution."""
MIN_PAGE_CHARS: Final = 1
"""A PDF page with fewer non-blank characters in its text layer is treated as a scan."""

PDF: Final = "application/pdf"
PLAIN: Final = "text/plain"
DOCLING_FORMATS: Final[dict[str, tuple[str, str]]] = {
    # mime type -> (docling InputFormat name, file extension docling expects)
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ("DOCX", ".docx"),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": (
        "PPTX",
        ".pptx",
    ),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ("XLSX", ".xlsx"),
    "text/html": ("HTML", ".html"),
    "application/xhtml+xml": ("HTML", ".html"),
    "text/markdown": ("MD", ".md"),
    "text/x-markdown": ("MD", ".md"),
    "text/csv": ("CSV", ".csv"),
    PDF: ("PDF", ".pdf"),
}
IMAGE_MIMES: Final = frozenset(
    {"image/png", "image/jpeg", "image/tiff", "image/webp", "image/bmp", "image/gif"}
)


@dataclass(frozen=True)
class Extracted:
    """Extracted text (markdown) and how it was obtained (recorded as provenance)."""

    text: str
    method: str


def can_extract(mime: str) -> str | None:
    """The capability extracting ``mime`` needs (``"extract"`` or ``"ocr"``), None if none can."""
    mime = _bare(mime)
    if mime in IMAGE_MIMES:
        return "ocr"
    if mime == PLAIN or mime in DOCLING_FORMATS:
        return "extract"
    return None


def extract(data: bytes, *, mime: str, name: str, artifacts: str | None = None) -> Extracted:
    """The text of a file. Raises ``UnsupportedError`` or ``ExtractError`` (one-line reasons).

    ``artifacts`` (default: ``$SHOAL_DOCLING_ARTIFACTS``) is a directory of docling models
    installed locally; with it, text PDFs go through the layout pipeline.
    """
    mime = _bare(mime)
    if mime in IMAGE_MIMES:
        return Extracted(_ocr_image(data, name), "tesseract")
    if mime == PLAIN:
        return Extracted(_decode_plain(data, name), "plain")
    if mime == PDF:
        return _extract_pdf(data, name, artifacts or os.environ.get(ARTIFACTS_ENV) or None)
    if mime in DOCLING_FORMATS:
        return Extracted(_docling_markdown(data, mime, name, None), "docling")
    raise UnsupportedError(f"cannot extract text from {mime or 'an unknown type'} ({name})")


# --- plain text ---------------------------------------------------------------------------


def _decode_plain(data: bytes, name: str) -> str:
    if b"\x00" in data:
        raise ExtractError(f"{name} is labelled text/plain but holds binary data")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")  # the usual legacy encoding of notes
    return _require_text(text.replace("\r\n", "\n"), name)


# --- docling ------------------------------------------------------------------------------


def _docling_markdown(data: bytes, mime: str, name: str, artifacts: str | None) -> str:
    """Convert with docling and export markdown; all pages, or one page per item of a PDF."""
    document = _docling_document(data, mime, name, artifacts)
    return _require_text(document.export_to_markdown(), name)


def _docling_document(data: bytes, mime: str, name: str, artifacts: str | None) -> Any:
    from docling.datamodel.base_models import ConversionStatus, DocumentStream
    from docling.exceptions import ConversionError

    _, extension = DOCLING_FORMATS[mime]
    stream = DocumentStream(name=PurePath(name).stem + extension, stream=io.BytesIO(data))
    converter, lock = _converter(artifacts)
    try:
        with lock:
            result = converter.convert(stream, raises_on_error=False)
    except ConversionError as exc:
        raise ExtractError(f"cannot read {name}: {_one_line(exc)}") from exc
    except Exception as exc:  # a backend choking on corrupt input raises anything
        raise ExtractError(f"cannot read {name}: {type(exc).__name__}: {_one_line(exc)}") from exc
    if result.status not in (ConversionStatus.SUCCESS, ConversionStatus.PARTIAL_SUCCESS):
        reasons = "; ".join(e.error_message for e in result.errors) or result.status.value
        raise ExtractError(f"cannot read {name}: {_one_line(reasons)}")
    return result.document


@cache
def _converter(artifacts: str | None) -> tuple[Any, threading.Lock]:
    """One converter per configuration: docling caches its pipelines inside it."""
    from docling.datamodel.accelerator_options import AcceleratorOptions
    from docling.datamodel.base_models import InputFormat
    from docling.datamodel.pipeline_options import (
        NativePdfPipelineOptions,
        PdfPipelineOptions,
    )
    from docling.document_converter import (
        DocumentConverter,
        FormatOption,
        NativePdfFormatOption,
        PdfFormatOption,
    )

    pdf_option: FormatOption
    if artifacts is None:
        native = NativePdfPipelineOptions(
            generate_page_images=False, generate_picture_images=False, parser_threads=1
        )
        pdf_option = NativePdfFormatOption(pipeline_options=native)
    else:
        layout = PdfPipelineOptions(
            artifacts_path=artifacts,
            do_ocr=False,  # pages without text go to tesseract, page by page, here
            accelerator_options=AcceleratorOptions(num_threads=1, device="cpu"),
        )
        pdf_option = PdfFormatOption(pipeline_options=layout)
    formats = sorted({InputFormat[fmt] for fmt, _ in DOCLING_FORMATS.values()})
    converter = DocumentConverter(
        allowed_formats=formats, format_options={InputFormat.PDF: pdf_option}
    )
    return converter, threading.Lock()


# --- PDF ----------------------------------------------------------------------------------


def _extract_pdf(data: bytes, name: str, artifacts: str | None) -> Extracted:
    """Text pages through docling, scanned pages through tesseract, in page order."""
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        raise ExtractError(f"{name} is not a readable PDF: {_one_line(exc)}") from exc
    try:
        page_count = len(pdf)
        if page_count == 0:
            raise ExtractError(f"{name} is a PDF with no pages")
        scanned = [i for i in range(page_count) if not _has_text_layer(pdf[i])]
        ocr_text = dict(zip(scanned, ocr_images(_render(pdf, scanned)), strict=True))
    except pdfium.PdfiumError as exc:
        raise ExtractError(f"{name}: a page of the PDF cannot be read: {_one_line(exc)}") from exc
    finally:
        pdf.close()
    method = "docling" if artifacts else "docling-native-pdf"
    if not scanned:
        return Extracted(_docling_markdown(data, PDF, name, artifacts), method)
    if len(scanned) == page_count:
        return Extracted(_require_text(_join(ocr_text.values()), name), "tesseract")
    document = _docling_document(data, PDF, name, artifacts)
    pages = [
        ocr_text[i] if i in ocr_text else document.export_to_markdown(page_no=i + 1)
        for i in range(document.num_pages())
    ]
    return Extracted(_require_text(_join(pages), name), f"{method}+tesseract")


def _has_text_layer(page: Any) -> bool:
    textpage = page.get_textpage()
    try:
        text: str = textpage.get_text_range()
    finally:
        textpage.close()
    return sum(not ch.isspace() for ch in text) >= MIN_PAGE_CHARS


def _render(pdf: Any, page_indexes: list[int]) -> Iterator[Image]:
    for index in page_indexes:
        bitmap = pdf[index].render(scale=OCR_DPI / 72, grayscale=True)
        yield bitmap.to_pil()


# --- images -------------------------------------------------------------------------------


def _ocr_image(data: bytes, name: str) -> str:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        if getattr(image, "n_frames", 1) == 1:
            frames = [_ocr_mode(image)]
        else:  # a multi-page TIFF or an animation: the iterator reuses one object, so copy
            frames = [_ocr_mode(frame.copy()) for frame in ImageSequence.Iterator(image)]
    except UnidentifiedImageError as exc:
        raise ExtractError(f"{name} is not a readable image: unknown image format") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ExtractError(f"{name} is not a readable image: {_one_line(exc)}") from exc
    text = _join(ocr_images(frames))
    if not text:
        raise ExtractError(f"no text found in image {name}")
    return text


def _ocr_mode(frame: Image) -> Image:
    """The frame as tesseract takes it: grey or RGB pass as they are (no copy), others convert."""
    return frame if frame.mode in ("1", "L", "RGB", "RGBA") else frame.convert("RGB")


# --- helpers ------------------------------------------------------------------------------


def _bare(mime: str) -> str:
    """``text/plain; charset=utf-8`` -> ``text/plain``."""
    return mime.split(";", 1)[0].strip().lower()


def _join(texts: Any) -> str:
    return "\n\n".join(t for t in texts if t.strip())


def _require_text(text: str, name: str) -> str:
    text = text.strip()
    if not text:
        raise ExtractError(f"no text found in {name}")
    return text


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split())[:300]
