"""What one session's job holds: its database pool and Redis client, closed at the end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from agent.settings import AgentSettings
from jarvis.db import create_pool


@dataclass
class SessionResources:
    settings: AgentSettings
    db_pool: Any
    redis: Any

    @classmethod
    async def open(cls, settings: AgentSettings) -> SessionResources:
        redis = aioredis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        pool = await create_pool(settings.database_url, min_size=0, max_size=3, timeout_s=settings.db_timeout_s)
        return cls(settings=settings, db_pool=pool, redis=redis)

    async def aclose(self) -> None:
        await self.redis.aclose()
        await self.db_pool.close()
