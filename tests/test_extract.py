"""Extraction with real docling, tesseract and pypdfium2, on inputs generated here.

Office files are written with python-docx / python-pptx / openpyxl (docling's own
dependencies), the text PDF with fpdf2, images and the scanned PDF with Pillow and the
DejaVu font. OCR is judged by character accuracy: 1 - Levenshtein distance / length.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont
from rapidfuzz.distance import Levenshtein

from eventlog.errors import ShoalError
from processors.errors import ExtractError, UnsupportedError
from processors.extract import EXTRACT_VERSION, Extracted, can_extract, extract
from processors.ocr import tessdata_dir, tesseract_available

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

needs_tesseract = pytest.mark.skipif(
    not tesseract_available(),
    reason=f"tesseract not usable (tesserocr import or language data; found {tessdata_dir()})",
)
needs_font = pytest.mark.skipif(not FONT.is_file(), reason=f"{FONT} missing (fonts-dejavu-core)")

LETTER = (
    "Dear Margaret, the ferry to Stornoway leaves at 9:40 on Tuesday.\n"
    "Please bring the blue folder with the harbour permits and 35 pounds\n"
    "for the tickets. The weather forecast promises light winds and rain."
)


def accuracy(expected: str, got: str) -> float:
    """Character accuracy, whitespace-insensitive: 1 - edit distance / expected length."""
    a, b = " ".join(expected.split()), " ".join(got.split())
    return 1.0 - Levenshtein.distance(a, b) / len(a)


def render(text: str, size: tuple[int, int] = (1700, 400), font_size: int = 36) -> Image.Image:
    image = Image.new("L", size, 255)
    font = ImageFont.truetype(str(FONT), font_size)
    ImageDraw.Draw(image).multiline_text((40, 40), text, font=font, fill=0, spacing=18)
    return image


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def text_pdf(pages: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for page in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, page)
    return bytes(pdf.output())


# --- capability -------------------------------------------------------------------------


def test_can_extract_names_the_capability() -> None:
    assert can_extract("image/png") == "ocr"
    assert can_extract("image/jpeg") == "ocr"
    assert can_extract("application/pdf") == "extract"
    assert can_extract("text/plain; charset=utf-8") == "extract"
    assert can_extract(DOCX) == "extract"
    assert can_extract("application/zip") is None
    assert can_extract("") is None
    assert EXTRACT_VERSION == "1"


# --- OCR --------------------------------------------------------------------------------


@needs_tesseract
@needs_font
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP"])
def test_ocr_of_a_rendered_image_recovers_the_text(fmt: str) -> None:
    data = encoded(render(LETTER), fmt)
    result = extract(data, mime=f"image/{fmt.lower()}", name=f"letter.{fmt.lower()}")
    assert result.method == "tesseract"
    assert accuracy(LETTER, result.text) >= 0.95, result.text


@needs_tesseract
@needs_font
def test_multi_page_tiff_reads_every_page_in_order() -> None:
    first, second = render("The first page talks about ferries."), render("Page two: gulls.")
    data = encoded(first, "TIFF", save_all=True, append_images=[second])
    result = extract(data, mime="image/tiff", name="pages.tiff")
    assert result.text.split("\n\n") == ["The first page talks about ferries.", "Page two: gulls."]


@needs_tesseract
@needs_font
def test_scanned_pdf_goes_through_ocr() -> None:
    pages = [render(LETTER, size=(1700, 2200)), render("Page two: the harbour closes at dusk.")]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="PDF", resolution=200, save_all=True, append_images=pages[1:])
    result = extract(buffer.getvalue(), mime="application/pdf", name="scan.pdf")
    assert result.method == "tesseract"
    first, second = result.text.split("\n\n", 1)
    assert accuracy(LETTER, first) >= 0.95, first
    assert "harbour closes at dusk" in second


@needs_tesseract
@needs_font
def test_pdf_with_text_and_scanned_pages_keeps_page_order() -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "Typed first page about the river ferry.")
    pdf.add_page()
    pdf.image(render(LETTER), x=5, y=10, w=200)
    pdf.add_page()
    pdf.multi_cell(0, 8, "Typed last page with the timetable.")
    result = extract(bytes(pdf.output()), mime="application/pdf", name="mixed.pdf")
    assert result.method == "docling-native-pdf+tesseract"
    first, scanned, last = result.text.split("\n\n", 2)
    assert first == "Typed first page about the river ferry."
    assert accuracy(LETTER, scanned) >= 0.95, scanned
    assert last == "Typed last page with the timetable."


@needs_tesseract
def test_image_without_text_is_an_extract_error() -> None:
    image = Image.new("RGB", (800, 600), (250, 250, 250))
    ImageDraw.Draw(image).ellipse((200, 150, 600, 450), outline=(20, 20, 20), width=8)
    with pytest.raises(ExtractError, match="no text found"):
        extract(encoded(image, "PNG"), mime="image/png", name="circle.png")


def test_corrupt_image_is_an_extract_error() -> None:
    with pytest.raises(ExtractError, match="not a readable image"):
        extract(b"\x89PNG\r\n\x1a\nnot really", mime="image/png", name="broken.png")


# --- docling ----------------------------------------------------------------------------


def test_docx() -> None:
    import docx

    document = docx.Document()
    document.add_heading("Harbour report", 1)
    document.add_paragraph("The lighthouse keeper counted forty ships in March.")
    buffer = io.BytesIO()
    document.save(buffer)
    result = extract(buffer.getvalue(), mime=DOCX, name="report.docx")
    assert result == Extracted(
        "## Harbour report\n\nThe lighthouse keeper counted forty ships in March.", "docling"
    )


def test_pptx() -> None:
    import pptx

    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])
    slide.shapes.title.text = "Quarterly apples"
    slide.placeholders[1].text = "Orchard yield rose by twelve percent."
    buffer = io.BytesIO()
    deck.save(buffer)
    result = extract(buffer.getvalue(), mime=PPTX, name="deck.pptx")
    assert "Quarterly apples" in result.text
    assert "Orchard yield rose by twelve percent." in result.text


def test_xlsx_becomes_a_markdown_table() -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["fruit", "count"])
    sheet.append(["pear", 17])
    buffer = io.BytesIO()
    book.save(buffer)
    result = extract(buffer.getvalue(), mime=XLSX, name="stock.xlsx")
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")] for line in result.text.split("\n")
    ]
    assert rows[0] == ["fruit", "count"]
    assert rows[2] == ["pear", "17"]


def test_html() -> None:
    html = (
        b"<html><body><h1>Glacier notes</h1><p>The glacier retreated two metres.</p></body></html>"
    )
    result = extract(html, mime="text/html; charset=utf-8", name="notes.html")
    assert result == Extracted("# Glacier notes\n\nThe glacier retreated two metres.", "docling")


def test_markdown() -> None:
    source = "# Bees\n\nHoneybees *dance* to share the location of flowers.\n\n- one\n- two\n"
    result = extract(source.encode(), mime="text/markdown", name="bees.md")
    assert result.method == "docling"
    assert result.text.startswith("# Bees\n\nHoneybees *dance* to share")
    assert "- one\n- two" in result.text


def test_plain_text_is_decoded_as_is() -> None:
    text = "Grocery list:\r\n\r\n  eggs, flour, crème fraîche\n"
    result = extract(("\ufeff" + text).encode(), mime="text/plain", name="list.txt")
    assert result == Extracted("Grocery list:\n\n  eggs, flour, crème fraîche", "plain")
    legacy = extract("caf\xe9".encode("cp1252"), mime="text/plain", name="old.txt")
    assert legacy.text == "café"


def test_text_pdf_goes_through_docling_native_pipeline() -> None:
    data = text_pdf(["Volcanic soil is rich in minerals.", "Second page about tides."])
    result = extract(data, mime="application/pdf", name="soil.pdf")
    assert result.method == "docling-native-pdf"
    assert result.text == "Volcanic soil is rich in minerals.\n\nSecond page about tides."


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.7\n1 0 obj garbage", b"", b"not a pdf at all", text_pdf(["cut short"])[:200]],
)
def test_corrupt_pdf_is_an_extract_error(data: bytes) -> None:
    with pytest.raises(ExtractError) as caught:
        extract(data, mime="application/pdf", name="broken.pdf")
    assert "\n" not in str(caught.value)


def test_corrupt_office_file_is_an_extract_error() -> None:
    with pytest.raises(ExtractError, match=r"cannot read broken\.docx"):
        extract(b"PK\x03\x04 this is no zip", mime=DOCX, name="broken.docx")


def test_unsupported_format_is_typed() -> None:
    with pytest.raises(UnsupportedError, match="application/zip"):
        extract(b"PK\x03\x04", mime="application/zip", name="archive.zip")


@pytest.mark.parametrize(
    ("data", "mime"),
    [(b"   \n\n ", "text/plain"), (b"\x00\x01\x02", "text/plain"), (b"<html></html>", "text/html")],
)
def test_empty_or_binary_text_is_an_extract_error(data: bytes, mime: str) -> None:
    with pytest.raises(ExtractError):
        extract(data, mime=mime, name="empty")


def test_errors_are_shoal_errors_with_exit_code_7() -> None:
    with pytest.raises(ShoalError) as caught:
        extract(b"xx", mime="application/x-nope", name="x")
    assert caught.value.exit_code == 7
