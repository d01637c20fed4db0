"""Accounts, sessions and signed review decisions in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from middleware.store import Store
from middleware.store.accounts import AccountError
from web.test_console_api import held_message

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SECRET = "a long enough password"


def test_passwords_are_kept_as_argon2_hashes_only(store: Store) -> None:
    store.create_user("anne", "biologist", SECRET, "root", NOW)
    with store.engine.connect() as connection:
        [stored] = connection.exec_driver_sql("select password_hash from users").scalars()
    assert stored.startswith("$argon2id$") and SECRET not in stored
    with pytest.raises(AccountError):
        store.create_user("anne", "admin", SECRET, "root", NOW)  # never twice, never deleted
    with pytest.raises(AccountError):
        store.create_user("bob", "superuser", SECRET, "root", NOW)


def test_the_third_failure_locks_and_only_an_unlock_reopens(store: Store) -> None:
    store.create_user("anne", "biologist", SECRET, "root", NOW)
    assert [store.login("anne", "bad", NOW).refused for _ in range(3)] == [
        "bad_credentials",
        "bad_credentials",
        "locked",
    ]
    assert store.login("anne", SECRET, NOW).refused == "locked"
    store.unlock_user("anne", "root", NOW)
    assert store.login("anne", SECRET, NOW).token


def test_a_success_resets_the_count_of_failures(store: Store) -> None:
    store.create_user("anne", "biologist", SECRET, "root", NOW)
    for _ in range(2):
        store.login("anne", "bad", NOW)
    assert store.login("anne", SECRET, NOW).token
    for _ in range(2):
        store.login("anne", "bad", NOW)
    assert store.login("anne", SECRET, NOW).token


def test_one_open_session_per_account_and_tokens_are_not_stored(store: Store) -> None:
    store.create_user("anne", "biologist", SECRET, "root", NOW)
    first = store.login("anne", SECRET, NOW)
    second = store.login("anne", SECRET, NOW + timedelta(minutes=1))
    assert store.session_for(first.token) is None
    view = store.session_for(second.token)
    assert view is not None and view.user == "anne" and view.role == "biologist"
    with store.engine.connect() as connection:
        tokens = list(connection.exec_driver_sql("select token_sha256 from sessions").scalars())
    assert second.token not in tokens and len(tokens) == 2
    store.disable_user("anne", "root", "left", NOW)
    assert store.session_for(second.token) is None


def test_signed_results_take_the_biologist_and_queue_a_correction(store: Store) -> None:
    store.save_message(held_message(1))
    [item] = store.due("lis", NOW)
    with store.engine.begin() as connection:
        connection.exec_driver_sql(
            f"update outbox set state = 'delivered' where id = {item.outbox_id}"
        )
    [row] = store.results_page("held")
    outcome = store.sign_results([row["id"]], "rejected", "Dr B", "clotted", "lis", NOW)
    assert (outcome.results, outcome.corrections) == (1, 1)
    [after] = store.results_page()
    assert (after["decision"], after["biologist"]) == ("rejected", "Dr B")
    assert store.count_held() == 0
    [audit] = store.audit_search(action="result_")
    assert audit["actor"] == "Dr B" and audit["detail"]["comment"] == "clotted"
