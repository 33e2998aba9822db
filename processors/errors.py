"""Errors of the processing tools: each names one reason a job cannot produce its result.

The job runner records the message as the job's failure reason (``shoal jobs``), so each
message is one clear line. ``ModelUnavailableError`` is apart because it usually means "wait
and retry" (Ollama down, model not pulled), while the others mean "this input will never work".
"""

from __future__ import annotations

from eventlog.errors import ShoalError


class ProcessingError(ShoalError):
    """A processor could not produce its result."""

    exit_code = 7


class UnsupportedError(ProcessingError):
    """A format we have no extractor for."""


class ExtractError(ProcessingError):
    """Input that an extractor accepts in principle but cannot read: corrupt, empty, no text."""


class ModelUnavailableError(ProcessingError):
    """No model to run: Ollama down or too slow, a model it does not serve, no local model."""
