"""The PEP 249 exception hierarchy and the mapping from wire error codes to it.

Every error the daemon reports carries a ``code``: a PostgreSQL SQLSTATE (five characters,
e.g. ``23505``) when PostgreSQL raised it, else a daemon code in snake_case (``pool_timeout``).
:func:`error_class` picks the exception class for a code; SQLSTATEs are classified by their
two-character class (``23`` integrity, ``42`` syntax/access, ...).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "Warning",
    "Error",
    "InterfaceError",
    "DatabaseError",
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
    "error_class",
    "from_wire",
]


class Warning(Exception):  # noqa: A001 - the name is fixed by PEP 249
    """Important warnings (PEP 249). Not raised by this package today."""


class Error(Exception):
    """Base class of every error raised by ``qail_ipc``.

    Attributes describe the failure as the daemon reported it; they are ``None`` when the
    error was raised by the client itself (``InterfaceError``, connection problems).
    """

    #: The wire error code: a SQLSTATE or a daemon code such as ``"pool_timeout"``.
    code: Optional[str]
    #: The SQLSTATE when PostgreSQL raised the error, else ``None``.
    sqlstate: Optional[str]
    #: The message without the code.
    message: str
    detail: Optional[str]
    hint: Optional[str]
    #: 1-based character position in the SQL text, when PostgreSQL reported one.
    position: Optional[int]
    severity: Optional[str]
    #: For ``pipeline`` and ``batch`` failures: the index of the first failing statement.
    index: Optional[int]
    #: The complete error object from the wire (empty for client-side errors).
    fields: Dict[str, Any]

    def __init__(
        self,
        message: str = "",
        *,
        code: Optional[str] = None,
        fields: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.sqlstate = code if code is not None and is_sqlstate(code) else None
        self.fields = dict(fields or {})
        get = self.fields.get
        self.detail = get("detail")
        self.hint = get("hint")
        self.position = get("position")
        self.severity = get("severity")
        self.index = get("index")

    def __str__(self) -> str:
        text = "%s: %s" % (self.code, self.message) if self.code else self.message
        if self.detail:
            text += "\nDETAIL: %s" % self.detail
        if self.hint:
            text += "\nHINT: %s" % self.hint
        return text


class InterfaceError(Error):
    """The client or the protocol was misused, not the database."""


class DatabaseError(Error):
    """An error related to the database."""


class DataError(DatabaseError):
    """Bad data: a value out of range, a division by zero, an invalid input syntax."""


class OperationalError(DatabaseError):
    """The database or the daemon could not do the work: not reachable, timed out, ..."""


class IntegrityError(DatabaseError):
    """A constraint was violated (SQLSTATE class 23)."""


class InternalError(DatabaseError):
    """The database or the daemon is in an unexpected state."""


class ProgrammingError(DatabaseError):
    """A mistake in the SQL or in how it was sent: syntax, unknown table, wrong parameters."""


class NotSupportedError(DatabaseError):
    """A feature the database does not support (SQLSTATE class 0A)."""


# SQLSTATE class (first two characters) → exception class.
_SQLSTATE_CLASSES: Dict[str, Type[Error]] = {}
for _cls, _prefixes in (
    (NotSupportedError, ("0A",)),
    (DataError, ("21", "22")),
    (IntegrityError, ("23",)),
    (InternalError, ("24", "25", "2B", "2D", "2F", "38", "39", "3B", "F0", "P0", "XX")),
    (ProgrammingError, ("26", "34", "3D", "3F", "42", "44")),
    (OperationalError, ("08", "28", "40", "53", "54", "55", "57", "58", "HV")),
):
    for _prefix in _prefixes:
        _SQLSTATE_CLASSES[_prefix] = _cls

# Daemon codes (docs/protocol.md, "Errors") → exception class.
_DAEMON_CODES: Dict[str, Type[Error]] = {
    "bad_request": ProgrammingError,
    "unknown_op": InterfaceError,
    "frame_too_large": InterfaceError,
    "unsupported_protocol": InterfaceError,
    "not_connected": ProgrammingError,
    "unknown_upstream": OperationalError,
    "unknown_handle": ProgrammingError,
    "bad_parameter": ProgrammingError,
    "auth_failed": OperationalError,
    "forbidden": ProgrammingError,
    "transaction_state": ProgrammingError,
    "transaction_aborted": InternalError,
    "upstream_unavailable": OperationalError,
    "pool_timeout": OperationalError,
    "timeout": OperationalError,
    "shutting_down": OperationalError,
    "internal": InternalError,
}


def is_sqlstate(code: str) -> bool:
    """Whether ``code`` looks like a SQLSTATE (five digits or upper-case letters)."""
    return len(code) == 5 and all(c.isdigit() or "A" <= c <= "Z" for c in code)


def error_class(code: Optional[str]) -> Type[Error]:
    """The exception class for a wire error code; :class:`DatabaseError` when unknown."""
    if not code:
        return DatabaseError
    if is_sqlstate(code):
        return _SQLSTATE_CLASSES.get(code[:2], DatabaseError)
    return _DAEMON_CODES.get(code, DatabaseError)


def from_wire(error: Any) -> Error:
    """Builds the exception for the ``error`` object of a failed response."""
    if not isinstance(error, dict):
        return InterfaceError("malformed error response: %r" % (error,))
    code = error.get("code")
    message = error.get("message") or "(no message)"
    return error_class(code)(message, code=code, fields=error)
