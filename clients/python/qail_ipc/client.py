"""The synchronous client: one Unix-socket connection to qail-daemon.

Thread safety: one lock serialises each request/response exchange, so a :class:`Client` may
be shared by any number of threads; their requests take turns on the one connection. A
:meth:`Client.transaction` block holds that lock until it ends, so other threads wait
instead of running their statements inside someone else's transaction. (Explicit
:meth:`~Client.begin`/:meth:`~Client.commit` do not hold it: use them from one thread.)

Fork safety: the client remembers the process id that opened its socket. In a forked child
(gunicorn ``--preload``, celery prefork) the first request closes the inherited file
descriptor without touching the parent's connection and opens a new one, replaying ``hello``
and the upstream selection. A transaction never crosses a fork.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import weakref
from itertools import accumulate
from contextlib import contextmanager
from typing import (
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from ._protocol import PROTOCOL, FrameReader, encode_frame, gc_paused, resolve_socket_path
from ._values import apply_decoders, decode_rows, decoder_for, encode_params, row_decoders
from .errors import Error, InterfaceError, OperationalError, from_wire
from .rows import Column, RowFactory, tuple_row

__all__ = ["Client", "Handle", "Result", "connect", "CLIENT_NAME"]

#: Sent in ``hello`` unless a client name is given.
CLIENT_NAME = "qail-ipc-python"

#: Extra seconds the socket waits beyond ``timeout``: the daemon cancels the statement at
#: ``timeout`` and answers; the socket timeout only guards against a daemon that hangs.
_SOCKET_GRACE = 5.0

_ALL_CLIENTS: "weakref.WeakSet[Client]" = weakref.WeakSet()

#: Sends never raise SIGPIPE, even in a process that restored its default action.
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)


class _PeerClosed(OperationalError):
    """The daemon had closed the connection before a request was sent, so none of it ran.

    A send to a Unix socket whose peer has closed fails at once (``EPIPE``), so an idle
    connection the daemon dropped (it restarted, or shut down) is noticed by the next request
    without a system call of its own; that request is then sent again on a new connection.
    """


def _reinit_after_fork() -> None:
    for client in list(_ALL_CLIENTS):
        # A lock held by another thread at fork time would stay held forever in the child.
        client._lock = threading.RLock()
        # The socket belongs to the parent; the next request opens the child's own (checked
        # here once rather than with a getpid() system call per request).
        client._forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)


class Handle:
    """A prepared statement: the daemon's handle plus the SQL it was prepared from.

    Handles are shared by every process using the same upstream. When the daemon no longer
    knows one (it restarted, or evicted the statement) the client prepares :attr:`sql`
    again, once, and retries the request.
    """

    __slots__ = ("sql", "name", "param_types", "columns")

    def __init__(
        self, sql: str, name: str, param_types: Sequence[str], columns: Sequence[Column]
    ) -> None:
        #: The SQL text.
        self.sql = sql
        #: The daemon's handle string.
        self.name = name
        #: PostgreSQL type names of the ``$n`` parameters.
        self.param_types = list(param_types)
        #: The result columns.
        self.columns = list(columns)

    @classmethod
    def _from_response(cls, sql: str, response: Dict[str, Any]) -> "Handle":
        return cls(sql, response["handle"], response.get("params") or [], _columns(response))

    def _refresh(self, response: Dict[str, Any]) -> None:
        self.name = response["handle"]
        self.param_types = list(response.get("params") or [])
        self.columns = _columns(response)

    def __repr__(self) -> str:
        return "Handle(%r, sql=%r)" % (self.name, self.sql)


class Result:
    """The result of one statement of a :meth:`Client.pipeline` or :meth:`Client.batch`."""

    __slots__ = ("columns", "rows", "command", "rows_affected")

    def __init__(
        self, columns: List[Column], rows: List[Any], command: str, rows_affected: int
    ) -> None:
        #: Result columns; empty for statements that return no rows.
        self.columns = columns
        #: The rows, made by the client's row factory.
        self.rows = rows
        #: The command tag (``"SELECT 2"``, ``"INSERT 0 1"``).
        self.command = command
        #: Rows returned or affected.
        self.rows_affected = rows_affected

    def __repr__(self) -> str:
        return "Result(command=%r, rows=%r)" % (self.command, self.rows)


Statement = Union[str, Handle]
Params = Sequence[Any]


def _columns(response: Dict[str, Any]) -> List[Column]:
    return [Column(c["name"], c["type"]) for c in response.get("columns") or ()]


def _results(columns: List[Column], built: List[Any], commands: Any, affected: Any) -> List[Result]:
    """One :class:`Result` per statement of a pipeline, all sharing ``columns``."""
    return list(map(Result, [columns] * len(built), built, commands, affected))


def _rows_affected(response: Dict[str, Any]) -> int:
    n = response.get("rows_affected")
    if n is not None:
        return int(n)
    # Older answers carry only the command tag, whose last word is the count when it has one.
    tail = (response.get("command") or "").rpartition(" ")[2]
    return int(tail) if tail.isdigit() else 0


def _not_running(path: str, exc: OSError) -> OperationalError:
    if isinstance(exc, PermissionError):
        why = "permission denied (the socket is mode 0660: run as its owner or group)"
    elif isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        why = "no daemon is listening there"
    else:
        why = exc.strerror or str(exc)
    return OperationalError(
        "cannot connect to qail-daemon at %s: %s. Start the daemon with "
        "`qail-daemon --config FILE` (its [ipc] socket must be this path), or set "
        "QAIL_SOCKET / pass connect(path=...) to point at its socket." % (path, why)
    )


class _Base:
    """What the sync and asyncio clients share: settings, message building, row making."""

    path: str
    timeout: Optional[float]
    raw: bool
    row_factory: RowFactory

    def _configure(
        self,
        path: Optional[str],
        token: Optional[str],
        timeout: Optional[float],
        raw: bool,
        row_factory: RowFactory,
        client_name: str,
    ) -> None:
        #: The socket path in use.
        self.path = resolve_socket_path(path)
        #: Seconds a request may take; sent to the daemon as ``timeout_ms`` (None = no limit).
        self.timeout = timeout
        #: When true, values are returned exactly as the protocol sends them.
        self.raw = raw
        #: Turns result rows into objects; see :mod:`qail_ipc.rows`.
        self.row_factory = row_factory
        #: ``server`` and ``session`` from the daemon's ``hello`` answer.
        self.server: Optional[str] = None
        self.session: Optional[str] = None
        self._client_name = client_name
        self._token = token
        self._selection: Optional[Dict[str, Any]] = None
        self._next_id = 0
        self._in_transaction = False
        self._closed = False
        # The last answer's raw ``columns`` and what was made of them (see _shape).
        self._shape_memo: Optional[Tuple[Any, List[Column], List[Tuple[int, Any]]]] = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction begun by this client is open."""
        return self._in_transaction

    def _hello_message(self) -> Dict[str, Any]:
        hello: Dict[str, Any] = {"op": "hello", "protocol": PROTOCOL, "client": self._client_name}
        if self._token is not None:
            hello["token"] = self._token
        return hello

    def _stamp(self, message: Dict[str, Any]) -> int:
        """Gives ``message`` the next id (and the timeout); returns the id."""
        self._next_id += 1
        message["id"] = self._next_id
        if self.timeout is not None:
            message["timeout_ms"] = max(1, int(self.timeout * 1000))
        return self._next_id

    def _shape(self, raw_columns: Any) -> Tuple[List[Column], List[Tuple[int, Any]]]:
        """The :class:`Column` list and value decoders for an answer's ``columns``.

        Answers to the same statement repeat the same columns, so the last ones are kept and
        compared (one C-level list comparison) instead of being rebuilt for every answer.
        """
        memo = self._shape_memo
        if memo is not None and memo[0] == raw_columns:
            return memo[1], memo[2]
        columns = [Column(c["name"], c["type"]) for c in raw_columns or ()]
        decoders = row_decoders([c.type for c in columns])
        self._shape_memo = (raw_columns, columns, decoders)
        return columns, decoders

    def _make_rows(self, response: Dict[str, Any]) -> Tuple[List[Column], List[Any]]:
        raw_columns = response.get("columns")
        memo = self._shape_memo
        if memo is not None and memo[0] == raw_columns:
            columns, decoders = memo[1], memo[2]
        else:
            columns, decoders = self._shape(raw_columns)
        rows = response.get("rows") or []
        if decoders and not self.raw:
            apply_decoders(decoders, rows)
        factory = self.row_factory
        if factory is tuple_row:
            return columns, list(map(tuple, rows))
        make = factory(columns)
        return columns, [make(r) for r in rows]

    def _result(self, response: Dict[str, Any]) -> Result:
        columns, rows = self._make_rows(response)
        return Result(list(columns), rows, response.get("command", ""), _rows_affected(response))

    def _pipeline_results(self, answer: Dict[str, Any]) -> List[Result]:
        """The results of a ``pipeline`` answer: ``column_major`` (one list of values per
        column, ``counts``, ``rows_affected`` and ``commands``), ``columnar`` (``rows``,
        ``rows_affected`` and ``commands`` lists), ``compact`` (columns once, then one object per
        statement), or one full result object per statement."""
        if "values" in answer:
            return self._column_major_results(answer)
        if "commands" in answer:
            return self._build_results(
                answer,
                answer.get("rows") or (),
                answer.get("commands") or (),
                answer.get("rows_affected") or (),
            )
        results = answer.get("results") or ()
        if "columns" not in answer:
            return [self._result(r) for r in results]
        return self._build_results(
            answer,
            [r.get("rows") or [] for r in results],
            [r.get("command", "") for r in results],
            [_rows_affected(r) if r.get("rows_affected") is None else r["rows_affected"]
             for r in results],
        )

    def _column_major_results(self, answer: Dict[str, Any]) -> List[Result]:
        """One :class:`Result` per statement from a ``column_major`` answer: the rows are the
        columns zipped (made as tuples in C), then cut into statements by ``counts``."""
        columns = _columns(answer)
        counts: List[int] = answer.get("counts") or []
        values: List[List[Any]] = answer.get("values") or []
        total = sum(counts)
        if len(values) != len(columns) or any(len(v) != total for v in values):
            raise InterfaceError(
                "malformed pipeline answer: %d value lists for %d columns and %d rows"
                % (len(values), len(columns), total)
            )
        with gc_paused(total >= 1000):
            if not self.raw:
                for i, column in enumerate(columns):
                    decode = decoder_for(column.type)
                    if decode is not None:
                        values[i] = [v if v is None else decode(v) for v in values[i]]
            rows: List[Any] = list(zip(*values)) if values else [()] * total
            factory = self.row_factory
            if factory is not tuple_row:
                make = factory(columns)
                rows = [make(list(row)) for row in rows]
            ends = list(accumulate(counts))
            cuts = map(slice, [0] + ends[:-1], ends)
            built = list(map(rows.__getitem__, cuts))
            return _results(
                columns, built, answer.get("commands") or (), answer.get("rows_affected") or ()
            )

    def _build_results(
        self, answer: Dict[str, Any], all_rows: Any, commands: Any, affected: Any
    ) -> List[Result]:
        """One :class:`Result` per statement, rows made by the row factory."""
        columns = _columns(answer)
        types = [c.type for c in columns]
        decode = not self.raw and any(decoder_for(t) is not None for t in types)
        factory = self.row_factory
        make = None if factory is tuple_row else factory(columns)
        with gc_paused(len(all_rows) >= 1000):
            if decode:
                for rows in all_rows:
                    decode_rows(types, rows)
            if make is None:
                built = [list(map(tuple, rows)) for rows in all_rows]
            else:
                built = [[make(row) for row in rows] for rows in all_rows]
            return _results(columns, built, commands, affected)

    @staticmethod
    def _statement_message(op: str, statement: Statement, params: Params = ()) -> Dict[str, Any]:
        if type(statement) is Handle:
            message: Dict[str, Any] = {"op": op, "handle": statement.name}
        else:
            message = {"op": op}
            _set_target(message, statement)
        if params:
            message["params"] = encode_params(params)
        return message

    @staticmethod
    def _pipeline_message(
        statement: Statement, params_batch: Iterable[Params], atomic: bool, count_only: bool
    ) -> Dict[str, Any]:
        message: Dict[str, Any] = {"op": "pipeline"}
        _set_target(message, statement)
        message["params_batch"] = [encode_params(p) for p in params_batch]
        if count_only:
            message["count_only"] = True
        else:
            # Columns once, and one list of values per column instead of one per row.
            message["column_major"] = True
        if atomic:
            message["atomic"] = True
        return message

    @staticmethod
    def _batch_items(
        statements: Iterable[Union[Statement, Tuple[Statement, Params]]]
    ) -> List[Tuple[Statement, Params]]:
        return [s if isinstance(s, tuple) else (s, ()) for s in statements]

    @staticmethod
    def _batch_message(items: List[Tuple[Statement, Params]], atomic: bool) -> Dict[str, Any]:
        specs = []
        for statement, params in items:
            spec: Dict[str, Any] = {}
            _set_target(spec, statement)
            if params:
                spec["params"] = encode_params(params)
            specs.append(spec)
        message: Dict[str, Any] = {"op": "batch", "statements": specs}
        if atomic:
            message["atomic"] = True
        return message

    @staticmethod
    def _begin_message(isolation: Optional[str], read_only: Optional[bool]) -> Dict[str, Any]:
        message: Dict[str, Any] = {"op": "begin"}
        if isolation is not None:
            message["isolation"] = isolation
        if read_only is not None:
            message["read_only"] = bool(read_only)
        return message

    @staticmethod
    def _connect_pg_message(
        host: str, port: int, user: str, database: str, password: str, sslmode: Optional[str]
    ) -> Dict[str, Any]:
        message: Dict[str, Any] = {
            "op": "connect_pg",
            "host": host,
            "port": int(port),
            "user": user,
            "database": database,
            "password": password,
        }
        if sslmode is not None:
            message["sslmode"] = sslmode
        return message


def _set_target(message: Dict[str, Any], statement: Statement) -> None:
    """Names the statement by ``sql`` or by ``handle``."""
    if isinstance(statement, str):
        message["sql"] = statement
    elif isinstance(statement, Handle):
        message["handle"] = statement.name
    else:
        raise TypeError("a statement is a SQL string or a Handle, not %r" % (statement,))


#: Frames up to this size are sent before the previous answer has been read (a Unix socket
#: buffers far more, so the daemon never waits on this process to write its answer).
_SEND_AHEAD_MAX = 64 * 1024


def _is_unknown_handle(exc: Error, statement: Any) -> bool:
    return exc.code == "unknown_handle" and isinstance(statement, Handle)


class Client(_Base):
    """A connection to qail-daemon. Create it with :func:`connect`."""

    def __init__(
        self,
        path: Optional[str] = None,
        *,
        upstream: Optional[str] = None,
        token: Optional[str] = None,
        timeout: Optional[float] = None,
        raw: bool = False,
        row_factory: RowFactory = tuple_row,
        client_name: str = CLIENT_NAME,
    ) -> None:
        self._configure(path, token, timeout, raw, row_factory, client_name)
        self._sock: Optional[socket.socket] = None
        self._reader = FrameReader()
        self._poller: Optional[Any] = None
        self._pid = os.getpid()
        self._forked = False
        self._lock = threading.RLock()
        _ALL_CLIENTS.add(self)
        with self._lock:
            self._open()
            if upstream is not None:
                self.use(upstream)

    # -- connection management ----------------------------------------------------------------

    def _open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(None if self.timeout is None else self.timeout + _SOCKET_GRACE)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise _not_running(self.path, exc) from None
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        # A blocked recv() is woken when the daemon reads the request (the kernel signals the
        # room it made), only to sleep again; poll() for POLLIN ignores that signal. With a
        # timeout the socket module polls by itself.
        self._reader = FrameReader(wait=self._poller.poll if self.timeout is None else None)
        self._pid = os.getpid()
        self._forked = False
        self._in_transaction = False
        try:
            answer = self._exchange(self._hello_message())
            self.server = answer.get("server")
            self.session = answer.get("session")
            if self._selection is not None:
                self._exchange(dict(self._selection))
        except BaseException:
            self._drop()
            raise

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _exchange(self, message: Dict[str, Any]) -> Dict[str, Any]:
        """Sends one request and reads its answer. The lock must be held.

        The path every ``query`` takes, so it does only what one request needs.
        """
        sock = self._sock
        if sock is None:
            raise InterfaceError("not connected")
        request_id = self._stamp(message)
        self._send_first(sock, encode_frame(message), message)
        try:
            response = self._reader.read(sock)
        except BaseException as exc:
            raise self._broken(exc, message, sock)
        if response.get("id") != request_id:
            self._out_of_step(request_id, response)
        if response.get("ok"):
            return response
        raise from_wire(response.get("error"))

    def _send_first(self, sock: socket.socket, frame: bytes, message: Dict[str, Any]) -> None:
        """Sends the first frame of an exchange; raises :class:`_PeerClosed` when the daemon
        had closed the connection (then nothing was sent)."""
        try:
            sock.sendall(frame, _SEND_FLAGS)
        except (BrokenPipeError, ConnectionResetError) as exc:
            self._drop()
            err = _PeerClosed(
                "qail-daemon at %s had closed the connection before %r was sent: %s"
                % (self.path, message.get("op"), exc)
            )
            raise err from exc
        except BaseException as exc:
            raise self._broken(exc, message, sock)

    def _broken(
        self, exc: BaseException, message: Dict[str, Any], sock: socket.socket
    ) -> BaseException:
        """Drops the connection after an exchange failed half-way; returns what to raise."""
        self._drop()
        if isinstance(exc, socket.timeout):
            err: BaseException = OperationalError(
                "qail-daemon at %s did not answer %r within %.1f s"
                % (self.path, message.get("op"), sock.gettimeout() or 0)
            )
            err.__suppress_context__ = True
            return err
        if isinstance(exc, (OSError, EOFError)):
            err = OperationalError(
                "lost the connection to qail-daemon at %s during %r: %s"
                % (self.path, message.get("op"), exc)
            )
            err.__cause__ = exc
            return err
        # Interrupted half-way (KeyboardInterrupt, ...): the stream is out of step.
        return exc

    def _out_of_step(self, request_id: int, response: Dict[str, Any]) -> None:
        """Raises for an answer whose id is not the request's."""
        self._drop()
        if response.get("ok") is False and response.get("id") is None:
            raise from_wire(response.get("error"))
        raise InterfaceError(
            "answer out of order: expected id %d, got %r" % (request_id, response.get("id"))
        )

    def _exchange_all(self, messages: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Sends requests and reads their answers, ok or not, in order. The lock must be held.

        With several requests, the next one is sent before the previous answer is read, so
        the daemon works on it while this process decodes; only small frames are sent ahead,
        so neither side can block the other on a full socket buffer.
        """
        sock = self._sock
        if sock is None:
            raise InterfaceError("not connected")
        ids = [self._stamp(m) for m in messages]
        frames = [encode_frame(m) for m in messages]
        ahead = len(frames) > 1 and max(map(len, frames)) <= _SEND_AHEAD_MAX
        answers: List[Dict[str, Any]] = []
        message = messages[0]
        self._send_first(sock, frames[0], message)
        try:
            for k in range(len(frames)):
                message = messages[k]
                if k > 0 and not ahead:
                    sock.sendall(frames[k], _SEND_FLAGS)
                if ahead and k + 1 < len(frames):
                    sock.sendall(frames[k + 1], _SEND_FLAGS)
                answers.append(self._reader.read(sock))
        except BaseException as exc:
            raise self._broken(exc, message, sock)
        for request_id, response in zip(ids, answers):
            if response.get("id") != request_id:
                self._out_of_step(request_id, response)
        return answers

    def _request(self, message: Dict[str, Any]) -> Dict[str, Any]:
        """Sends one request, (re)connecting first when needed."""
        with self._lock:
            if self._sock is None or self._forked:
                self._ready()
            try:
                return self._exchange(message)
            except _PeerClosed:
                self._reopen()
            return self._exchange(message)

    def _ready(self) -> None:
        """(Re)connects when needed. The lock must be held."""
        if self._closed:
            raise InterfaceError("the client is closed")
        if self._forked:
            # Forked: the socket belongs to the parent. Closing our copy of the file
            # descriptor leaves the parent's connection untouched.
            self._drop()
            self._in_transaction = False
        if self._sock is None:
            self._reopen()

    def _reopen(self) -> None:
        """Opens a new connection after the last one was lost or closed by the daemon. The
        lock must be held."""
        self._drop()
        if self._in_transaction:
            self._in_transaction = False
            raise OperationalError(
                "the connection to qail-daemon was lost inside a transaction; "
                "the daemon rolled the transaction back"
            )
        self._open()

    def _run_chunks(self, statement: Statement, chunks: List[List[Params]]) -> List[Dict[str, Any]]:
        """Runs one ``pipeline`` request per chunk (see :meth:`pipeline`); the answers in order.

        A failure is raised once every chunk has answered, as one error: the first failure's
        index within the whole batch, and succeeded/failed counted over all chunks.
        """
        for attempt in (1, 2):
            messages = [self._pipeline_message(statement, c, False, False) for c in chunks]
            with self._lock:
                self._ready()
                try:
                    answers = self._exchange_all(messages)
                except _PeerClosed:
                    self._reopen()
                    answers = self._exchange_all(messages)
            errors = [(k, a.get("error") or {}) for k, a in enumerate(answers) if not a.get("ok")]
            if not errors:
                return answers
            k, first = errors[0]
            if attempt == 1 and first.get("code") == "unknown_handle" and isinstance(statement, Handle):
                statement._refresh(self._request({"op": "prepare", "sql": statement.sql}))
                continue
            first = dict(first)
            if "index" in first:
                first["index"] = sum(map(len, chunks[:k])) + first["index"]
                failed = dict(errors)
                first["succeeded"] = sum(
                    failed[i].get("succeeded", 0) if i in failed else len(c)
                    for i, c in enumerate(chunks)
                )
                first["failed"] = sum(e.get("failed", 0) for e in failed.values())
            raise from_wire(first)
        raise InterfaceError("unreachable")  # pragma: no cover

    def _run(self, message: Dict[str, Any], statement: Statement) -> Dict[str, Any]:
        """Runs a statement op, healing an unknown handle once by preparing it again."""
        try:
            return self._request(message)
        except Error as exc:
            if not _is_unknown_handle(exc, statement):
                raise
        assert isinstance(statement, Handle)
        statement._refresh(self._request({"op": "prepare", "sql": statement.sql}))
        message["handle"] = statement.name
        return self._request(message)

    def close(self) -> None:
        """Closes the connection; an open transaction is rolled back by the daemon."""
        with self._lock:
            self._closed = True
            self._in_transaction = False
            self._drop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<qail_ipc.Client %s %s>" % (self.path, "closed" if self._closed else "open")

    # -- session ------------------------------------------------------------------------------

    def ping(self) -> None:
        """Round trip to the daemon."""
        self._request({"op": "ping"})

    def use(self, upstream: str) -> str:
        """Selects a configured upstream by name; returns its name."""
        selection = {"op": "connect", "upstream": upstream}
        answer = self._request(dict(selection))
        self._selection = selection
        return answer.get("upstream", upstream)

    def connect_pg(
        self,
        host: str,
        port: int,
        user: str,
        database: str,
        password: str = "",
        sslmode: Optional[str] = None,
    ) -> str:
        """Selects the configured upstream with these credentials; returns its name.

        ``sslmode`` (``"disable"``, ``"prefer"`` or ``"require"``) is the weakest TLS towards
        PostgreSQL this client accepts: only an upstream at least that strict is selected.
        """
        selection = self._connect_pg_message(host, port, user, database, password, sslmode)
        answer = self._request(dict(selection))
        self._selection = selection
        return answer["upstream"]

    # -- statements ---------------------------------------------------------------------------

    def prepare(self, sql: str) -> Handle:
        """Prepares ``sql`` in the daemon's shared catalogue and returns its handle."""
        return Handle._from_response(sql, self._request({"op": "prepare", "sql": sql}))

    def query(self, statement: Statement, params: Params = ()) -> List[Any]:
        """Runs one statement (SQL text or :class:`Handle`) and returns its rows.

        ``params`` fill ``$1``, ``$2``, ... in order; see the README's type table.
        """
        message = self._statement_message("query", statement, params)
        return self._make_rows(self._run(message, statement))[1]

    def query_one(self, statement: Statement, params: Params = ()) -> Optional[Any]:
        """Like :meth:`query`, but returns only the first row, or ``None`` when there is none."""
        rows = self.query(statement, params)
        return rows[0] if rows else None

    def query_result(self, statement: Statement, params: Params = ()) -> Result:
        """Runs one statement and returns its :class:`Result` (columns, rows, command tag)."""
        message = self._statement_message("query", statement, params)
        return self._result(self._run(message, statement))

    def execute(self, statement: Statement, params: Params = ()) -> int:
        """Runs one statement without returning rows; returns the number of rows affected."""
        message = self._statement_message("execute", statement, params)
        return _rows_affected(self._run(message, statement))

    def pipeline(
        self,
        statement: Statement,
        params_batch: Iterable[Params],
        *,
        atomic: bool = False,
        chunk_size: Optional[int] = None,
    ) -> List[Result]:
        """Runs one statement once per parameter list, pipelined; one :class:`Result` each.

        Without ``atomic`` each statement commits on its own (outside a transaction) and a
        failure leaves the others done; with it, all run in one transaction.

        ``chunk_size`` sends the batch as consecutive requests of that many parameter lists, for
        batches too large for one frame (16 MiB by default, both ways). The next request is
        sent before the previous answer is decoded, so the daemon is already running it. Each
        chunk is its own request: a bad parameter fails only its chunk, so it cannot be
        combined with ``atomic``.
        """
        if chunk_size is None:
            message = self._pipeline_message(statement, params_batch, atomic, False)
            return self._pipeline_results(self._run(message, statement))
        if atomic:
            raise ValueError("chunk_size cannot be combined with atomic: each chunk is a request")
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        params = list(params_batch)
        chunks = [params[i : i + chunk_size] for i in range(0, len(params), chunk_size)]
        out: List[Result] = []
        for answer in self._run_chunks(statement, chunks or [[]]):
            out.extend(self._pipeline_results(answer))
        return out

    def prepared_pipeline(
        self, statement: Statement, params_batch: Iterable[Params], *, atomic: bool = False
    ) -> int:
        """Like :meth:`pipeline`, but no rows come back; returns how many statements ran."""
        message = self._pipeline_message(statement, params_batch, atomic, True)
        return int(self._run(message, statement)["count"])

    def batch(
        self,
        statements: Iterable[Union[Statement, Tuple[Statement, Params]]],
        *,
        atomic: bool = False,
    ) -> List[Result]:
        """Runs different statements in order on one connection, pipelined.

        Each item is a statement or a ``(statement, params)`` pair; one :class:`Result` each.
        With ``atomic`` they run in one transaction.
        """
        items = self._batch_items(statements)
        try:
            answer = self._request(self._batch_message(items, atomic))
        except Error as exc:
            # The daemon resolves every handle before running anything, so a retry is safe.
            if exc.code != "unknown_handle":
                raise
            for statement, _ in items:
                if isinstance(statement, Handle):
                    statement._refresh(self._request({"op": "prepare", "sql": statement.sql}))
            answer = self._request(self._batch_message(items, atomic))
        return [self._result(r) for r in answer.get("results") or ()]

    # -- transactions -------------------------------------------------------------------------

    def begin(self, isolation: Optional[str] = None, read_only: Optional[bool] = None) -> None:
        """Starts a transaction: the daemon pins one PostgreSQL connection to this client.

        ``isolation`` is ``"read committed"``, ``"repeatable read"`` or ``"serializable"``.
        """
        with self._lock:
            self._request(self._begin_message(isolation, read_only))
            self._in_transaction = True

    def commit(self) -> None:
        """Commits the transaction. One aborted by an earlier error raises and is rolled back."""
        with self._lock:
            try:
                self._request({"op": "commit"})
            finally:
                self._in_transaction = False

    def rollback(self) -> None:
        """Rolls the transaction back."""
        with self._lock:
            try:
                self._request({"op": "rollback"})
            finally:
                self._in_transaction = False

    @contextmanager
    def transaction(
        self, isolation: Optional[str] = None, read_only: Optional[bool] = None
    ) -> Iterator["Client"]:
        """A transaction as a context manager: commit on success, rollback on an exception.

        Other threads sharing the client wait until the block ends.
        """
        with self._lock:
            self.begin(isolation, read_only)
            try:
                yield self
            except BaseException:
                if self._in_transaction:
                    try:
                        self.rollback()
                    except Error:
                        pass  # the connection is gone; the daemon rolled back already
                raise
            self.commit()


def connect(
    path: Optional[str] = None,
    *,
    upstream: Optional[str] = None,
    token: Optional[str] = None,
    timeout: Optional[float] = None,
    raw: bool = False,
    row_factory: RowFactory = tuple_row,
    client_name: str = CLIENT_NAME,
) -> Client:
    """Connects to qail-daemon and returns a :class:`Client`.

    ``path`` defaults to ``QAIL_SOCKET``, else the daemon's default socket path.
    ``upstream`` selects a configured upstream by name (see also :meth:`Client.connect_pg`).
    ``token`` is sent in ``hello`` for daemons that require one. ``timeout`` (seconds) bounds
    every request: the daemon cancels the statement when it expires. ``raw=True`` returns
    values exactly as the protocol sends them. ``row_factory`` shapes rows
    (:func:`~qail_ipc.rows.dict_row`, :func:`~qail_ipc.rows.namedtuple_row`).

    Raises :class:`~qail_ipc.OperationalError` naming the socket when no daemon listens there.
    """
    return Client(
        path,
        upstream=upstream,
        token=token,
        timeout=timeout,
        raw=raw,
        row_factory=row_factory,
        client_name=client_name,
    )
