"""Tesseract OCR through tesserocr, with the language data of the system (Debian's tessdata).

The tesserocr wheel bundles libtesseract but no language data, and its built-in data path is
``./``; so the data directory is looked up here: ``TESSDATA_PREFIX`` if set, else the places
Debian and other distributions install ``tesseract-ocr-eng``. One engine is kept per process
(initialising one costs ~0.1 s and it is not thread-safe, hence the lock), and OpenMP inside
tesseract is held to one thread: more is slower on a small shared machine.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from processors.errors import ModelUnavailableError

if TYPE_CHECKING:
    from PIL.Image import Image

LANGUAGE: Final = "eng"
TESSDATA_DIRS: Final = (
    "/usr/share/tesseract-ocr/5/tessdata",
    "/usr/share/tesseract-ocr/4.00/tessdata",
    "/usr/share/tessdata",
    "/usr/local/share/tessdata",
    "/opt/homebrew/share/tessdata",
)
MIN_MEAN_CONFIDENCE: Final = 40
"""Below this mean word confidence (0-100) the "text" tesseract found is noise in a picture."""

_lock = threading.Lock()


class _Api(Protocol):
    """The part of ``tesserocr.PyTessBaseAPI`` used here (tesserocr ships no ``py.typed``)."""

    def SetImage(self, image: Image) -> None: ...  # noqa: N802 (tesserocr's names)
    def GetUTF8Text(self) -> str: ...  # noqa: N802
    def MeanTextConf(self) -> int: ...  # noqa: N802


def tessdata_dir() -> Path | None:
    """The directory holding ``eng.traineddata``, or None when no language data is installed."""
    candidates = [os.environ["TESSDATA_PREFIX"]] if os.environ.get("TESSDATA_PREFIX") else []
    for candidate in [*candidates, *TESSDATA_DIRS]:
        path = Path(candidate)
        for directory in (path, path / "tessdata"):
            if (directory / f"{LANGUAGE}.traineddata").is_file():
                return directory
    return None


def tesseract_available() -> bool:
    """True when tesserocr imports and the English language data is installed."""
    try:
        _engine()
    except ModelUnavailableError:
        return False
    return True


def ocr_images(images: Iterable[Image]) -> Iterator[str]:
    """The text of each image (stripped; "" where tesseract finds nothing it trusts)."""
    api = _engine()
    for image in images:
        with _lock:
            api.SetImage(image)
            text = api.GetUTF8Text()
            confidence = api.MeanTextConf()
        text = text.strip()
        if not any(ch.isalnum() for ch in text) or confidence < MIN_MEAN_CONFIDENCE:
            text = ""
        yield text


@cache
def _engine() -> _Api:
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    try:
        import tesserocr
    except ImportError as exc:
        raise ModelUnavailableError(f"tesseract is not installed (tesserocr: {exc})") from exc
    directory = tessdata_dir()
    if directory is None:
        raise ModelUnavailableError(
            f"no tesseract language data ({LANGUAGE}.traineddata): "
            "install tesseract-ocr-eng or set TESSDATA_PREFIX"
        )
    try:
        api: _Api = tesserocr.PyTessBaseAPI(path=f"{directory}/", lang=LANGUAGE)
    except RuntimeError as exc:
        raise ModelUnavailableError(f"tesseract failed to start: {exc}") from exc
    return api
