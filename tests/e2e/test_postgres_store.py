"""The daemon on a real PostgreSQL server (the store several gateways share, DESIGN.md): the
walking-skeleton path end to end, and backpressure — while the database refuses connections
nothing is acknowledged to the analyser, and once it is back the analyser's retry is stored and
delivered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from e2e.test_astm_transports import FAST, RESULTS, daemon

from simulators.analyser import AnalyserSimulator, build_result_message

INSTRUMENT = "  - name: chem-1\n    protocol: astm\n    transport: {type: tcp-server, port: 0}\n"


def _database_accepts(url: str, accepts: bool) -> None:
    """Open or close the test's database to new connections, and cut the open ones."""
    base, _, name = url.rpartition("/")
    admin = sa.create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(
                f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(accepts).lower()}'
            )
            if not accepts:
                connection.execute(
                    sa.text(
                        "select pg_terminate_backend(pid) from pg_stat_activity "
                        "where datname = :name and pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
    finally:
        admin.dispose()


async def test_results_travel_through_a_postgresql_store(tmp_path: Path, postgres_url: str) -> None:
    async with daemon(tmp_path, INSTRUMENT, postgres_url) as running:
        analyser = AnalyserSimulator(
            "127.0.0.1", running.gateway.addresses["chem-1"][1], timers=FAST
        )
        await analyser.connect()
        try:
            assert await analyser.send(build_result_message("PG-1", "PAT-1", RESULTS)) is True
        finally:
            await analyser.close()
        (received,) = await running.lis.wait_for(1)
        async with asyncio.timeout(10):  # the LIS's AA is recorded just after it is read
            while running.rows("select 1 from outbox where state = 'delivered'") == []:
                await asyncio.sleep(0.05)
    assert {o.code for o in received.parsed.observations} == {"GLU", "CREA"}  # type: ignore[union-attr]
    rows = running.rows("select specimen_id, delivered_at from results")
    assert [r.specimen_id for r in rows] == ["PG-1", "PG-1"]
    assert all(r.delivered_at is not None for r in rows)


async def test_nothing_is_acknowledged_while_the_database_is_down(
    tmp_path: Path, postgres_url: str
) -> None:
    async with daemon(tmp_path, INSTRUMENT, postgres_url) as running:
        port = running.gateway.addresses["chem-1"][1]
        analyser = AnalyserSimulator("127.0.0.1", port, timers=FAST)
        await analyser.connect()
        try:
            _database_accepts(postgres_url, False)
            try:
                refused = await analyser.send(build_result_message("DOWN-1", "PAT-1", RESULTS))
            finally:
                _database_accepts(postgres_url, True)
            assert refused is False  # the analyser keeps it and sends it again
            await analyser.close()
            analyser = AnalyserSimulator("127.0.0.1", port, timers=FAST)
            await analyser.connect()
            assert await analyser.send(build_result_message("DOWN-1", "PAT-1", RESULTS)) is True
        finally:
            await analyser.close()
        (received,) = await running.lis.wait_for(1)
    assert {o.specimen_id for o in received.parsed.observations} == {"DOWN-1"}  # type: ignore[union-attr]
    stored = running.rows("select count(*) as n from messages where status = 'stored'")
    assert stored[0].n == 1  # stored once, when it could be
