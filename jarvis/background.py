"""Work a service does on its own schedule, beside its requests: a periodic task, and the log of
an outage it meets there (one line when it starts, one when it ends, not one per try)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


class OutageLog:
    """``failed`` warns once per outage ("<what> (<error type>): <meanwhile>"); ``succeeded`` says
    when it is over ("<recovered>"). Error types only: never a message that may quote data."""

    def __init__(self, logger: logging.Logger, what: str, meanwhile: str, recovered: str) -> None:
        self.logger = logger
        self.what = what
        self.meanwhile = meanwhile
        self.recovered = recovered
        self.failing = False

    def failed(self, error: BaseException) -> None:
        if not self.failing:
            self.logger.warning("%s (%s): %s", self.what, type(error).__name__, self.meanwhile)
        self.failing = True

    def succeeded(self) -> None:
        if self.failing:
            self.logger.info("%s", self.recovered)
        self.failing = False


class Periodic:
    """Awaits ``step`` every ``period_s`` on a task of its own, from the first ``start()`` (called
    from the event loop that serves the requests) until ``aclose()``. ``step`` handles its own errors."""

    def __init__(self, name: str, period_s: float, step: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self.period_s = period_s
        self.step = step
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            await self.step()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
