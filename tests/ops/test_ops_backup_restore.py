"""`labgate backup` and `labgate restore` on both backends (GBUI I-4): a round trip gives back
exactly the contents backed up, each run is audited, and a restore is refused while the
daemon answers or when the file is not a sound backup."""

from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import free_port
from ops_store_data import config, contents, incoming, populate

from middleware.cli import main
from middleware.ops.backup import BackupError, list_backups, rotate, take_backup, verify
from middleware.store import Store


def _audit(url: str) -> list[tuple[str, str, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [
                (row.actor, row.action, row.subject)
                for row in connection.execute(sa.text("select * from audit order by id"))
            ]
    finally:
        engine.dispose()


def test_backup_then_restore_gives_back_every_row(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store.open(store_url)
    populate(store)
    store.close()
    before = contents(store_url)
    backups = tmp_path / "backups"
    cfg = config(
        tmp_path / "lab.yaml",
        store_url,
        api_port=free_port(),
        lis_port=free_port(),
        backups=backups,
    )

    assert main(["backup", "--config", str(cfg), "--author", "tech"]) == 0
    [backup] = list_backups(backups, "gw-ops")
    manifest = json.loads(backup.with_suffix(".json").read_text())
    assert manifest["tables"]["results"] == 3 and manifest["tables"]["transmissions"] == 1
    assert manifest["revision"] == before["alembic_version"][0][0]
    assert manifest["configuration"]["backup"]["directory"] == str(backups)
    assert _audit(store_url)[-1] == ("tech", "store_backup", backup.name)

    # Then the store goes wrong: a result altered, one lost, a new message after the backup.
    store = Store.open(store_url)
    late = incoming(9, datetime.now(UTC))
    store.save_message(late)
    with store.engine.begin() as connection:
        connection.execute(sa.text("update results set value = 'XXX' where id = 1"))
        connection.execute(sa.text("delete from transmissions"))
    store.close()
    assert contents(store_url) != before
    capsys.readouterr()

    assert main(["restore", str(backup), "--config", str(cfg), "--author", "Dr Restore"]) == 0
    printed = capsys.readouterr().out
    after = contents(store_url)
    assert {k: v for k, v in after.items() if k != "audit"} == {
        k: v for k, v in before.items() if k != "audit"
    }
    # The audit trail is never rolled back: what was there, the backup's own record (written
    # after the snapshot, carried over), then the restore.
    assert after["audit"][: len(before["audit"])] == before["audit"]
    assert [(a, b, c) for a, b, c in _audit(store_url)][len(before["audit"]) :] == [
        ("tech", "store_backup", backup.name),
        ("Dr Restore", "store_restored", backup.name),
    ]
    # The message received after the backup is named, and kept in the pre-restore copy.
    assert "1 message(s) received after the backup" in printed and late.message_id in printed
    [safety] = [p for p in backups.iterdir() if "-pre-restore" in p.name and p.suffix != ".json"]
    assert verify(safety).tables["messages"] == 4
    engine = sa.create_engine(store_url)
    with engine.connect() as connection:
        detail = connection.execute(
            sa.text("select detail from audit where action = 'store_restored'")
        ).scalar_one()
    engine.dispose()
    detail = json.loads(detail) if isinstance(detail, str) else detail
    assert detail["message_ids"] == [late.message_id]
    assert detail["safety_copy"] == str(safety)


def test_restore_is_refused_while_the_daemon_answers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'labgate.db'}"
    Store.open(url).close()
    backup = take_backup(url, tmp_path / "b", gateway="gw-ops", trigger="test")
    with socket.create_server(("127.0.0.1", 0)) as api:
        port = api.getsockname()[1]

        def answer() -> None:
            connection, _ = api.accept()
            with connection:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")

        threading.Thread(target=answer, daemon=True).start()
        cfg = config(tmp_path / "lab.yaml", url, api_port=port, lis_port=free_port())
        assert main(["restore", str(backup.path), "--config", str(cfg), "--author", "x"]) == 1
    # No pre-restore copy was made: nothing was touched.
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(
        [backup.path.name, backup.manifest_path.name]
    )


def test_an_altered_backup_is_refused_before_anything_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'labgate.db'}"
    store = Store.open(url)
    populate(store)
    store.close()
    backup = take_backup(url, tmp_path / "b", gateway="gw-ops", trigger="test")
    data = bytearray(backup.path.read_bytes())
    data[-100] ^= 0xFF
    backup.path.write_bytes(bytes(data))
    before = contents(url)
    cfg = config(tmp_path / "lab.yaml", url, api_port=free_port(), lis_port=free_port())
    assert main(["restore", str(backup.path), "--config", str(cfg), "--author", "x"]) == 1
    assert "SHA-256" in capsys.readouterr().err
    assert contents(url) == before
    not_a_backup = tmp_path / "notes.txt"
    not_a_backup.write_text("hello")
    with pytest.raises(BackupError, match="neither a SQLite database nor a pg_dump archive"):
        verify(not_a_backup)


def test_rotation_keeps_the_newest_and_never_a_pre_restore_copy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'labgate.db'}"
    Store.open(url).close()
    folder = tmp_path / "b"
    made = [
        take_backup(url, folder, gateway="gw", trigger="t", now=datetime(2025, 1, d, tzinfo=UTC))
        for d in range(1, 6)
    ]
    kept_aside = take_backup(
        url, folder, gateway="gw", trigger="t", label="pre-restore", now=datetime(2024, 1, 1)
    )
    other_gateway = take_backup(url, folder, gateway="gw2", trigger="t")
    removed = rotate(folder, "gw", keep=2)
    assert removed == [b.path for b in made[:3]]
    assert list_backups(folder, "gw") == [b.path for b in made[3:]]
    assert kept_aside.path.exists() and other_gateway.path.exists()
    assert not made[0].manifest_path.exists()


def test_a_backup_copies_a_store_the_daemon_is_writing(tmp_path: Path) -> None:
    """The online backup takes a consistent snapshot while another connection commits."""
    url = f"sqlite:///{tmp_path / 'labgate.db'}"
    store = Store.open(url)
    stop = threading.Event()

    written = threading.Semaphore(0)

    def write() -> None:
        number = 100
        while not stop.is_set():
            store.save_message(incoming(number, datetime.now(UTC)))
            written.release()
            number += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(20):
            assert written.acquire(timeout=10)
        backups = [
            take_backup(url, tmp_path / "b", gateway="gw", trigger="t", label=str(n))
            for n in range(3)
        ]
    finally:
        stop.set()
        writer.join()
        store.close()
    for backup in backups:
        checked = verify(backup.path)
        # Every message has its specimen and result: no half-committed message was copied.
        assert checked.tables["messages"] == checked.tables["results"] > 0
        assert checked.tables == backup.tables


def test_backup_without_a_destination_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'labgate.db'}"
    cfg = config(tmp_path / "lab.yaml", url, api_port=free_port(), lis_port=free_port())
    assert main(["backup", "--config", str(cfg)]) == 2
    assert main(["backup", "--config", str(cfg), "--to", str(tmp_path / "x")]) == 1  # no store
    assert not (tmp_path / "labgate.db").exists()  # not created by trying to audit the failure
