"""Group commit: requests that arrive while the writer is busy are committed together.

With SQLite in `synchronous=FULL` (and PostgreSQL's `synchronous_commit`), each commit waits
for the disk. Fifty analysers each waiting for their own commit would be served one disk sync
at a time; gathering what arrived meanwhile into one transaction serves them all with one sync,
and each caller still returns only once its own request is durable.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

from sqlalchemy.exc import SQLAlchemyError

__all__ = ["GroupCommit"]

Request = TypeVar("Request")
Outcome = TypeVar("Outcome")

#: The most requests one transaction takes (bounds its size and the first caller's wait).
MAX_BATCH = 256


class GroupCommit(Generic[Request, Outcome]):
    """`submit()` from the event loop; `commit_batch` runs on `executor` (one thread) with every
    request waiting, and returns one outcome (or exception) per request, in order."""

    def __init__(
        self,
        executor: Executor,
        commit_batch: Callable[[Sequence[Request]], list[Outcome | Exception]],
        unavailable: Callable[[Exception], Exception],
    ) -> None:
        self._executor = executor
        self._commit_batch = commit_batch
        self._unavailable = unavailable
        self._lock = threading.Lock()
        self._waiting: list[tuple[Request, asyncio.Future[Outcome], asyncio.AbstractEventLoop]] = []
        self._scheduled = False

    async def submit(self, request: Request) -> Outcome:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcome] = loop.create_future()
        with self._lock:
            self._waiting.append((request, done, loop))
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self._executor.submit(self._flush)
        return await done

    def _flush(self) -> None:
        """On the writer thread: commit what is waiting, in batches, until nothing is."""
        while True:
            with self._lock:
                batch = self._waiting[:MAX_BATCH]
                del self._waiting[:MAX_BATCH]
                if not batch:
                    self._scheduled = False
                    return
            try:
                outcomes = self._commit_batch([request for request, _, _ in batch])
            except SQLAlchemyError as exc:
                failure = self._unavailable(exc)
                outcomes = [failure] * len(batch)
            except Exception as exc:  # a bug: every caller hears of it, nobody hangs
                outcomes = [exc] * len(batch)
            for (_, done, loop), outcome in zip(batch, outcomes, strict=True):
                loop.call_soon_threadsafe(_settle, done, outcome)


def _settle(done: asyncio.Future[Outcome], outcome: Outcome | Exception) -> None:
    if done.done():  # the caller was cancelled (its connection closed): nothing to tell
        return
    if isinstance(outcome, Exception):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)
