"""qail_ipc — a pure-Python client for qail-daemon.

The daemon owns the PostgreSQL connections of a host and serves local processes over a Unix
socket (protocol 1, ``docs/protocol.md``). This package speaks that protocol with the standard
library alone (``orjson`` is used when installed)::

    from qail_ipc import connect

    client = connect()
    client.connect_pg("localhost", 5432, "user", "db", "")
    handle = client.prepare("SELECT id, name FROM users LIMIT $1")
    count = client.prepared_pipeline(handle, [["10"], ["5"], ["1"]] * 3333)

:mod:`qail_ipc.aio` is the asyncio client and :mod:`qail_ipc.dbapi` the DB-API 2.0 module.
"""

from ._protocol import PROTOCOL, default_socket_path, resolve_socket_path
from ._values import Interval, Range
from .client import Client, Handle, Result, connect
from .errors import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    Warning,
)
from .rows import Column, dict_row, namedtuple_row, tuple_row

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL",
    "Client",
    "Column",
    "DataError",
    "DatabaseError",
    "Error",
    "Handle",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "Interval",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "Range",
    "Result",
    "Warning",
    "connect",
    "default_socket_path",
    "dict_row",
    "namedtuple_row",
    "resolve_socket_path",
    "tuple_row",
]
