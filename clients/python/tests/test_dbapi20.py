"""The standard DB-API 2.0 compliance suite (dbapi20.py, vendored from Stuart Bishop's
public-domain ``dbapi-compliance`` 1.15.0) run against qail_ipc.dbapi."""

from __future__ import annotations

import pytest

import dbapi20
from qail_ipc import dbapi


@pytest.fixture(scope="class")
def compliance_daemon(request, pg_cluster, daemon_bin):
    from conftest import Daemon

    d = Daemon(daemon_bin, pg_cluster, pg_cluster.create_database())
    d.start()
    request.cls.connect_kw_args = {"path": d.socket, "upstream": "main", "timeout": 30.0}
    yield d
    d.cleanup()


@pytest.mark.usefixtures("compliance_daemon")
class TestDBAPI20(dbapi20.DatabaseAPI20Test):
    driver = dbapi
    connect_args = ()
    connect_kw_args: dict = {}

    def test_nextset(self):
        # nextset is optional (PEP 249); the daemon returns one result set per statement.
        cur = self._connect().cursor()
        self.assertFalse(hasattr(cur, "nextset"))

    def test_setoutputsize(self):
        # setoutputsize may do nothing; the cursor must keep working after it.
        con = self._connect()
        try:
            cur = con.cursor()
            cur.setoutputsize(100, 0)
            cur.execute("select 'abc'")
            self.assertEqual(cur.fetchall(), [("abc",)])
        finally:
            con.close()
