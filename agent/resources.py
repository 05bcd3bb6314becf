"""What one session's job holds: its database pool and Redis client, closed at the end."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from agent.settings import AgentSettings
from jarvis.db import create_pool

logger = logging.getLogger("jarvis.agent")


@dataclass
class SessionResources:
    settings: AgentSettings
    db_pool: Any
    redis: Any
    # Work that needs the database at the end of the session (session summary, latency), run
    # before the pool closes: LiveKit runs shutdown callbacks concurrently, so order is ours to keep.
    finishers: list[Callable[[str], Awaitable[None]]] = field(default_factory=list)

    def on_close(self, finisher: Callable[[str], Awaitable[None]]) -> None:
        """Run ``finisher(reason)`` at the end of the session, while the database is still open."""
        self.finishers.append(finisher)

    @classmethod
    async def open(cls, settings: AgentSettings) -> SessionResources:
        redis = aioredis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        pool = await create_pool(settings.database_url, min_size=0, max_size=3, timeout_s=settings.db_timeout_s)
        return cls(settings=settings, db_pool=pool, redis=redis)

    async def aclose(self, reason: str = "") -> None:
        for finisher in self.finishers:
            try:
                await finisher(reason)
            except Exception:
                logger.exception("end-of-session step failed")
        await self.redis.aclose()
        await self.db_pool.close()
