"""Signing in to a running gateway's API from tests: an account created in its store, a
session opened with `POST /api/session`, the CSRF token sent with every request."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx

PASSWORD = "correct horse battery"


def add_user(store: Any, name: str, role: str, password: str = PASSWORD) -> None:
    """An account straight in the store (what `labgate user add` does), unless it exists."""
    if not any(user["name"] == name for user in store.users()):
        store.create_user(name, role, password, "test", datetime.now(UTC))


@contextlib.asynccontextmanager
async def signed_in(
    gateway: Any, role: str = "admin", name: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client signed in to `gateway` with a new account of `role`."""
    name = name or f"test-{role}"
    await gateway.store.run(add_user, gateway.store, name, role)
    base = "http://{}:{}".format(*gateway.addresses["api"])
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        answer = await client.post("/api/session", json={"name": name, "password": PASSWORD})
        answer.raise_for_status()
        client.headers["X-CSRF-Token"] = answer.json()["csrf"]
        yield client
