"""The asyncio client: same methods as coroutines, concurrency on one connection,
cancellation, transactions owned by a task."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from qail_ipc import IntegrityError, InterfaceError, OperationalError, ProgrammingError, aio, dict_row


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _connect(daemon, **kwargs):
    kwargs.setdefault("timeout", 30.0)
    return await aio.connect(daemon.socket, upstream="main", **kwargs)


def test_every_method(daemon):
    async def main():
        async with await _connect(daemon) as client:
            assert client.server and client.session
            await client.ping()
            assert await client.use("main") == "main"
            assert await client.connect_pg(**daemon.pg_credentials) == "main"
            assert await client.execute("CREATE TABLE t (id int PRIMARY KEY, v numeric)") == 0
            handle = await client.prepare("INSERT INTO t VALUES ($1, $2)")
            assert handle.param_types == ["int4", "numeric"]
            assert await client.execute(handle, [1, Decimal("1.5")]) == 1
            assert await client.prepared_pipeline(handle, [[2, 2], [3, "3.25"]]) == 2
            results = await client.pipeline("SELECT v FROM t WHERE id = $1", [[1], [3]])
            assert [r.rows for r in results] == [[(Decimal("1.5"),)], [(Decimal("3.25"),)]]
            batch = await client.batch([("SELECT count(*) FROM t", ()), "SELECT 1"], atomic=True)
            assert [r.rows for r in batch] == [[(3,)], [(1,)]]
            assert await client.query("SELECT id FROM t ORDER BY id") == [(1,), (2,), (3,)]
            assert await client.query_one("SELECT id FROM t WHERE id = $1", [9]) is None
            result = await client.query_result("SELECT id FROM t WHERE id = 2")
            assert result.command == "SELECT 1" and result.columns[0].type == "int4"
            client.row_factory = dict_row
            assert await client.query_one("SELECT id FROM t WHERE id = 2") == {"id": 2}
            with pytest.raises(IntegrityError):
                await client.execute(handle, [1, 0])
            async with client.transaction():
                await client.execute("DELETE FROM t")
            assert await client.query_one("SELECT count(*) AS n FROM t") == {"n": 0}
            with pytest.raises(ZeroDivisionError):
                async with client.transaction(isolation="serializable"):
                    await client.execute("INSERT INTO t VALUES (9, 9)")
                    1 / 0
            assert await client.query_one("SELECT count(*) AS n FROM t") == {"n": 0}
            await client.begin()
            await client.execute("INSERT INTO t VALUES (10, 10)")
            await client.commit()
            await client.begin(read_only=True)
            await client.rollback()
            with pytest.raises(ProgrammingError):
                await client.rollback()
        assert client.closed
        with pytest.raises(InterfaceError):
            await client.ping()

    run(main())


def test_many_concurrent_requests_on_one_connection(daemon):
    async def main():
        client = await _connect(daemon)
        handle = await client.prepare("SELECT $1::int AS n, pg_sleep(random() / 100)")

        async def one(i):
            if i % 3 == 0:
                return (await client.query(handle, [i]))[0][0]
            if i % 3 == 1:
                return (await client.query("SELECT $1::int + 0", [i]))[0][0]
            return (await client.pipeline(handle, [[i]]))[0].rows[0][0]

        got = await asyncio.gather(*(one(i) for i in range(300)))
        assert got == list(range(300))
        await client.close()

    run(main())


def test_cancelled_waiter_does_not_desynchronise(daemon):
    async def main():
        client = await _connect(daemon)
        slow = asyncio.ensure_future(client.query("SELECT 'slow', pg_sleep(0.4)"))
        await asyncio.sleep(0.1)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        # The next answers are each for their own request, not the cancelled one's.
        assert await client.query("SELECT 'next'") == [("next",)]
        assert await asyncio.gather(*(client.query_one("SELECT $1::int", [i]) for i in range(5))) \
            == [(i,) for i in range(5)]
        # Cancelling with wait_for works the same way.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.query("SELECT pg_sleep(0.4)"), 0.05)
        assert await client.query_one("SELECT 'after'") == ("after",)
        await client.close()

    run(main())


def test_daemon_timeout(daemon):
    async def main():
        client = await _connect(daemon, timeout=0.2)
        with pytest.raises(OperationalError) as info:
            await client.query("SELECT pg_sleep(5)")
        assert info.value.code == "timeout"
        assert await client.query("SELECT 1") == [(1,)]
        await client.close()

    run(main())


def test_transaction_belongs_to_its_task(daemon):
    async def main():
        client = await _connect(daemon)
        await client.execute("CREATE TABLE t (id int)")
        order = []

        async def outsider():
            await asyncio.sleep(0.05)
            await client.execute("INSERT INTO t VALUES (2)")  # waits for the transaction
            order.append("outsider")

        async def owner():
            with pytest.raises(RuntimeError):
                async with client.transaction():
                    await client.execute("INSERT INTO t VALUES (1)")
                    # Tasks started inside the transaction belong to it.
                    await asyncio.gather(client.execute("INSERT INTO t VALUES (3)"),
                                         client.query("SELECT 1"))
                    await asyncio.sleep(0.2)
                    order.append("owner")
                    raise RuntimeError("roll back")

        await asyncio.gather(owner(), outsider())
        assert order == ["owner", "outsider"]
        assert await client.query("SELECT id FROM t") == [(2,)]
        await client.close()

    run(main())


def test_concurrent_transactions_take_turns(daemon):
    async def main():
        client = await _connect(daemon)
        await client.execute("CREATE TABLE t (id int)")

        async def tx(i):
            async with client.transaction():
                await client.execute("INSERT INTO t VALUES ($1)", [i])
                await asyncio.sleep(0.01)

        await asyncio.gather(*(tx(i) for i in range(5)))
        assert sorted(await client.query("SELECT id FROM t")) == [(i,) for i in range(5)]
        await client.close()

    run(main())


def test_reconnects_and_heals_handles_after_restart(daemon):
    async def main():
        client = await _connect(daemon)
        handle = await client.prepare("SELECT 41 + $1::int")
        assert await client.query(handle, [0]) == [(41,)]
        await asyncio.get_running_loop().run_in_executor(None, daemon.restart)
        await asyncio.sleep(0.05)  # let the reader task see the end of the stream
        assert await client.query(handle, [1]) == [(42,)]
        await client.close()

    run(main())


def test_not_running(tmp_path):
    path = str(tmp_path / "none.sock")
    with pytest.raises(OperationalError) as info:
        run(aio.connect(path))
    assert path in str(info.value) and "qail-daemon --config FILE" in str(info.value)
