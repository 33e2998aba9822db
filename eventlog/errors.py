"""One error hierarchy for everything below the CLI.

The CLI turns any ``ShoalError`` into one line on stderr and a non-zero exit code; nothing else
should escape a decoder or the store. Each subclass names one way input or state can be wrong.
"""

from __future__ import annotations


class ShoalError(Exception):
    """Root of every error shoal raises on purpose."""

    exit_code = 1


# --- decoding -----------------------------------------------------------------------------


class DecodeError(ShoalError):
    """Bytes that are not a valid encoding of what was expected."""

    exit_code = 3


class TruncatedError(DecodeError):
    """The input ended before the value did."""


class OversizeError(DecodeError):
    """The input, or one of its fields, is larger than its limit."""


class WrongTypeError(DecodeError):
    """A field has the wrong type, length or range."""


class NonCanonicalError(DecodeError):
    """The value decodes, but its bytes are not the one canonical encoding of it."""


class UnknownVersionError(DecodeError):
    """A format version this code does not speak."""


class MalformedError(DecodeError):
    """Bytes that are not msgpack at all, or trailing garbage."""


# --- integrity ----------------------------------------------------------------------------


class IntegrityError(ShoalError):
    """An event that decodes but must not be believed."""

    exit_code = 4


class WrongVaultError(IntegrityError):
    """The event belongs to another vault."""


class BadSignatureError(IntegrityError):
    """The signature does not verify under the author's key."""


class BrokenChainError(IntegrityError):
    """``prev``/``seq``/``lamport`` do not continue the author's log."""


class DecryptError(IntegrityError):
    """The body does not open under the key of its epoch (tampered, or the wrong key)."""


class MissingKeyError(IntegrityError):
    """We hold no key for the event's epoch."""


class FrozenAuthorError(IntegrityError):
    """The author equivocated; nothing more is accepted from it."""


# --- membership ---------------------------------------------------------------------------


class MembershipError(ShoalError):
    """The author may not write this event at this point of the roster."""

    exit_code = 4


# --- storage ------------------------------------------------------------------------------


class StorageError(ShoalError):
    """The database is missing, corrupt, full or from a newer version."""

    exit_code = 5


class PendingFullError(StorageError):
    """The pending area is at its bound; the sender must retry later."""


# --- user-facing lookups --------------------------------------------------------------------


class NotFoundError(ShoalError):
    """No vault, document, event or replica matches what was asked for."""

    exit_code = 2


class AmbiguousError(ShoalError):
    """An id prefix matches more than one thing."""

    exit_code = 2


class VaultExistsError(ShoalError):
    """``init`` on a home that already holds a vault."""

    exit_code = 2
