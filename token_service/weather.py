"""Weather for the greeting: optional, cached, never allowed to slow a session down."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from pydantic import ValidationError

from jarvis.context import Weather

logger = logging.getLogger("token_service.weather")


class WeatherClient:
    """Reads ``GET {url}?city=…`` → ``{"description", "temperature_c"}``, cached per city in Redis.

    A cache miss starts the fetch in the background and waits at most ``timeout_s`` for it:
    a slow provider costs the session nothing beyond that, and warms the cache for the next.
    """

    def __init__(self, url: str | None, redis: Any, *, timeout_s: float, cache_ttl_s: int) -> None:
        self._url = url
        self._redis = redis
        self._timeout_s = timeout_s
        self._cache_ttl_s = cache_ttl_s
        self._http = httpx.AsyncClient(timeout=max(2.0, timeout_s * 4)) if url else None
        self._inflight: dict[str, asyncio.Task[Weather | None]] = {}

    @staticmethod
    def cache_key(city: str) -> str:
        return f"weather:{city.lower()}"

    def parse_cached(self, raw: bytes | str | None) -> Weather | None:
        if not raw:
            return None
        try:
            return Weather.model_validate_json(raw)
        except ValidationError:
            return None

    async def for_city(self, city: str, cached: bytes | str | None) -> Weather | None:
        if self._http is None:
            return None
        weather = self.parse_cached(cached)
        if weather is not None:
            return weather
        task = self._inflight.get(city)
        if task is None:
            task = asyncio.create_task(self._fetch(city))
            self._inflight[city] = task
            task.add_done_callback(lambda _t: self._inflight.pop(city, None))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._timeout_s)
        except TimeoutError:
            logger.info("weather provider slower than %.0f ms; session goes on without it", self._timeout_s * 1000)
            return None

    async def _fetch(self, city: str) -> Weather | None:
        assert self._http is not None and self._url is not None
        try:
            response = await self._http.get(self._url, params={"city": city})
            response.raise_for_status()
            weather = Weather.model_validate(response.json())
        except (httpx.HTTPError, ValidationError, ValueError) as exc:
            logger.warning("weather provider failed: %s", type(exc).__name__)
            return None
        try:
            await self._redis.set(self.cache_key(city), weather.model_dump_json(), ex=self._cache_ttl_s)
        except Exception as exc:  # the cache is an optimisation: a Redis hiccup must not lose the answer
            logger.warning("weather cache write failed: %s", type(exc).__name__)
        return weather

    async def aclose(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        if self._http is not None:
            await self._http.aclose()
