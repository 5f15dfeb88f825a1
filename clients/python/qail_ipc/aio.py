"""The asyncio client: the methods of :class:`qail_ipc.Client` as coroutines.

Many coroutines may use one :class:`AsyncClient` at once: each request is written whole with
its own id and a future is queued for it; one reader task takes the answers — which the
daemon sends in request order — and resolves the futures in that order. A coroutine that
is cancelled while it waits only cancels its future: the reader still consumes the answer
when it arrives and drops it, so the connection never gets out of step.

While a transaction is open, the connection belongs to the task that began it (and to tasks
it starts, which inherit its context): requests from other tasks wait until the transaction
ends, so they never run inside it.

Create clients inside the event loop (and inside the process) that uses them; unlike the
sync client, an ``AsyncClient`` is not carried across ``fork``.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Deque, Dict, Iterable, List, Optional, Tuple, Union

from ._protocol import HEADER, decode_body, encode_frame
from .client import (
    CLIENT_NAME,
    Handle,
    Params,
    Result,
    Statement,
    _Base,
    _is_unknown_handle,
    _not_running,
    _rows_affected,
    _SOCKET_GRACE,
)
from .errors import Error, InterfaceError, OperationalError, from_wire
from .rows import RowFactory, tuple_row

__all__ = ["AsyncClient", "connect"]

# The transactions the current task (and the tasks it started) is inside of.
_transactions: contextvars.ContextVar[Tuple[object, ...]] = contextvars.ContextVar(
    "qail_ipc_transactions", default=()
)


class AsyncClient(_Base):
    """An asyncio connection to qail-daemon. Create it with :func:`connect`."""

    def __init__(
        self,
        path: Optional[str] = None,
        *,
        token: Optional[str] = None,
        timeout: Optional[float] = None,
        raw: bool = False,
        row_factory: RowFactory = tuple_row,
        client_name: str = CLIENT_NAME,
    ) -> None:
        self._configure(path, token, timeout, raw, row_factory, client_name)
        self._writer: Optional[asyncio.StreamWriter] = None
        self._reader_task: Optional[asyncio.Task] = None
        self._pending: Deque[Tuple[int, asyncio.Future]] = collections.deque()
        self._open_lock = asyncio.Lock()
        self._drain_lock = asyncio.Lock()
        self._transaction: Optional[object] = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- connection management ----------------------------------------------------------------

    async def _open(self) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(self.path)
        except OSError as exc:
            raise _not_running(self.path, exc) from None
        self._writer = writer
        self._pending = collections.deque()
        self._reader_task = asyncio.ensure_future(self._read_answers(reader, self._pending))
        try:
            answer = await self._send(self._hello_message())
            self.server = answer.get("server")
            self.session = answer.get("session")
            if self._selection is not None:
                await self._send(dict(self._selection))
        except BaseException:
            self._drop()
            raise

    async def _read_answers(
        self, reader: asyncio.StreamReader, pending: Deque[Tuple[int, asyncio.Future]]
    ) -> None:
        """Resolves the queued futures, in order, with the answers as they arrive."""
        error: Error = OperationalError("lost the connection to qail-daemon at %s" % self.path)
        try:
            while True:
                (length,) = HEADER.unpack(await reader.readexactly(4))
                response = decode_body(await reader.readexactly(length))
                if not pending:
                    error = InterfaceError("unsolicited answer from the daemon: %r" % response)
                    break
                request_id, future = pending.popleft()
                if response.get("id") != request_id:
                    if response.get("ok") is False and response.get("id") is None:
                        error = from_wire(response.get("error"))  # broken framing: closed
                    else:
                        error = InterfaceError(
                            "answer out of order: expected id %d, got %r"
                            % (request_id, response.get("id"))
                        )
                    if not future.done():
                        future.set_exception(error)
                    break
                if not future.done():  # a cancelled waiter's answer is dropped here
                    future.set_result(response)
        except (asyncio.IncompleteReadError, OSError) as exc:
            error = OperationalError(
                "lost the connection to qail-daemon at %s: %s" % (self.path, exc)
            )
        except asyncio.CancelledError:
            error = InterfaceError("the client is closed")
            raise
        finally:
            if self._pending is pending:
                self._drop(reading=False)
            while pending:
                _, future = pending.popleft()
                if not future.done():
                    future.set_exception(error)

    def _drop(self, reading: bool = True) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        task, self._reader_task = self._reader_task, None
        if reading and task is not None and not task.done():
            task.cancel()

    async def _send(self, message: Dict[str, Any]) -> Dict[str, Any]:
        """Writes one request and waits for its answer."""
        writer = self._writer
        if writer is None:
            raise OperationalError("lost the connection to qail-daemon at %s" % self.path)
        request_id = self._stamp(message)
        future = asyncio.get_running_loop().create_future()
        # Queue and write with no await in between: the frame order is the queue order.
        self._pending.append((request_id, future))
        writer.write(encode_frame(message))
        async with self._drain_lock:
            await writer.drain()
        if self.timeout is None:
            response = await future
        else:
            try:
                response = await asyncio.wait_for(future, self.timeout + _SOCKET_GRACE)
            except asyncio.TimeoutError:
                raise OperationalError(
                    "qail-daemon at %s did not answer %r in time" % (self.path, message.get("op"))
                ) from None
        if response.get("ok"):
            return response
        raise from_wire(response.get("error"))

    def _ours(self) -> bool:
        return self._transaction is None or self._transaction in _transactions.get()

    async def _request(self, message: Dict[str, Any]) -> Dict[str, Any]:
        """Sends one request, waiting out other tasks' transactions and reconnecting."""
        while not self._ours():
            await self._idle.wait()
        if self._closed:
            raise InterfaceError("the client is closed")
        if self._writer is None:
            if self._transaction is not None:
                self._end_transaction()
                raise OperationalError(
                    "the connection to qail-daemon was lost inside a transaction; "
                    "the daemon rolled the transaction back"
                )
            async with self._open_lock:
                if self._writer is None:
                    await self._open()
        return await self._send(message)

    async def _run(self, message: Dict[str, Any], statement: Statement) -> Dict[str, Any]:
        try:
            return await self._request(message)
        except Error as exc:
            if not _is_unknown_handle(exc, statement):
                raise
        assert isinstance(statement, Handle)
        statement._refresh(await self._request({"op": "prepare", "sql": statement.sql}))
        message["handle"] = statement.name
        return await self._request(message)

    async def close(self) -> None:
        """Closes the connection; an open transaction is rolled back by the daemon."""
        self._closed = True
        self._end_transaction()
        task = self._reader_task
        self._drop()
        if task is not None:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return "<qail_ipc.aio.AsyncClient %s %s>" % (
            self.path, "closed" if self._closed else "open"
        )

    # -- session ------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Round trip to the daemon."""
        await self._request({"op": "ping"})

    async def use(self, upstream: str) -> str:
        """Selects a configured upstream by name; returns its name."""
        selection = {"op": "connect", "upstream": upstream}
        answer = await self._request(dict(selection))
        self._selection = selection
        return answer.get("upstream", upstream)

    async def connect_pg(
        self,
        host: str,
        port: int,
        user: str,
        database: str,
        password: str = "",
        sslmode: Optional[str] = None,
    ) -> str:
        """Selects the configured upstream with these credentials; returns its name.

        ``sslmode`` is as for :meth:`qail_ipc.Client.connect_pg`.
        """
        selection = self._connect_pg_message(host, port, user, database, password, sslmode)
        answer = await self._request(dict(selection))
        self._selection = selection
        return answer["upstream"]

    # -- statements ---------------------------------------------------------------------------

    async def prepare(self, sql: str) -> Handle:
        """Prepares ``sql`` in the daemon's shared catalogue and returns its handle."""
        return Handle._from_response(sql, await self._request({"op": "prepare", "sql": sql}))

    async def query(self, statement: Statement, params: Params = ()) -> List[Any]:
        """Runs one statement and returns its rows."""
        message = self._statement_message("query", statement, params)
        return self._make_rows(await self._run(message, statement))[1]

    async def query_one(self, statement: Statement, params: Params = ()) -> Optional[Any]:
        """The first row, or ``None``."""
        rows = await self.query(statement, params)
        return rows[0] if rows else None

    async def query_result(self, statement: Statement, params: Params = ()) -> Result:
        """Runs one statement and returns its :class:`~qail_ipc.Result`."""
        message = self._statement_message("query", statement, params)
        return self._result(await self._run(message, statement))

    async def execute(self, statement: Statement, params: Params = ()) -> int:
        """Runs one statement without returning rows; returns the number of rows affected."""
        message = self._statement_message("execute", statement, params)
        return _rows_affected(await self._run(message, statement))

    async def pipeline(
        self, statement: Statement, params_batch: Iterable[Params], *, atomic: bool = False
    ) -> List[Result]:
        """One statement, many parameter lists; one :class:`~qail_ipc.Result` each."""
        message = self._pipeline_message(statement, params_batch, atomic, False)
        answer = await self._run(message, statement)
        return self._pipeline_results(answer)

    async def prepared_pipeline(
        self, statement: Statement, params_batch: Iterable[Params], *, atomic: bool = False
    ) -> int:
        """Like :meth:`pipeline`, but no rows come back; returns how many statements ran."""
        message = self._pipeline_message(statement, params_batch, atomic, True)
        return int((await self._run(message, statement))["count"])

    async def batch(
        self,
        statements: Iterable[Union[Statement, Tuple[Statement, Params]]],
        *,
        atomic: bool = False,
    ) -> List[Result]:
        """Different statements in order on one connection; one result each."""
        items = self._batch_items(statements)
        try:
            answer = await self._request(self._batch_message(items, atomic))
        except Error as exc:
            if exc.code != "unknown_handle":
                raise
            for statement, _ in items:
                if isinstance(statement, Handle):
                    fresh = await self._request({"op": "prepare", "sql": statement.sql})
                    statement._refresh(fresh)
            answer = await self._request(self._batch_message(items, atomic))
        return [self._result(r) for r in answer.get("results") or ()]

    # -- transactions -------------------------------------------------------------------------

    def _end_transaction(self) -> None:
        self._transaction = None
        self._in_transaction = False
        self._idle.set()

    async def begin(
        self, isolation: Optional[str] = None, read_only: Optional[bool] = None
    ) -> None:
        """Starts a transaction owned by the current task (and the tasks it starts)."""
        message = self._begin_message(isolation, read_only)
        while not self._ours():
            await self._idle.wait()
        if self._transaction is not None:
            await self._request(message)  # already in ours: the daemon says transaction_state
            return
        # Claim the connection before the first await, so no other task slips in between.
        token = object()
        self._transaction = token
        self._idle.clear()
        _transactions.set(_transactions.get() + (token,))
        try:
            await self._request(message)
        except BaseException:
            self._end_transaction()
            raise
        self._in_transaction = True

    async def commit(self) -> None:
        """Commits the transaction."""
        try:
            await self._request({"op": "commit"})
        finally:
            self._end_transaction()

    async def rollback(self) -> None:
        """Rolls the transaction back."""
        try:
            await self._request({"op": "rollback"})
        finally:
            self._end_transaction()

    @asynccontextmanager
    async def transaction(
        self, isolation: Optional[str] = None, read_only: Optional[bool] = None
    ) -> AsyncIterator["AsyncClient"]:
        """``async with client.transaction():`` commits on success, rolls back on error."""
        await self.begin(isolation, read_only)
        try:
            yield self
        except BaseException:
            if self._in_transaction:
                try:
                    await self.rollback()
                except Error:
                    pass
            raise
        await self.commit()


async def connect(
    path: Optional[str] = None,
    *,
    upstream: Optional[str] = None,
    token: Optional[str] = None,
    timeout: Optional[float] = None,
    raw: bool = False,
    row_factory: RowFactory = tuple_row,
    client_name: str = CLIENT_NAME,
) -> AsyncClient:
    """Connects to qail-daemon from asyncio; the arguments are those of :func:`qail_ipc.connect`."""
    client = AsyncClient(
        path, token=token, timeout=timeout, raw=raw, row_factory=row_factory,
        client_name=client_name,
    )
    async with client._open_lock:
        await client._open()
    if upstream is not None:
        await client.use(upstream)
    return client
