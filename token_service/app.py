"""The token service: the gym backend asks for a kiosk session, gets a LiveKit room token.

POST /v1/sessions loads the member's context (Redis cache, else one PostgreSQL round trip),
stores the snapshot under a new session id, and returns a token whose room configuration
dispatches the ``jarvis`` agent with that session id.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from livekit import api as lkapi
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jarvis.context import session_context_key
from jarvis.context_store import MemberRecord, fetch_member_by_badge, member_cache_key
from jarvis.db import DatabaseUnavailable, create_pool, gym_key_hash
from jarvis.session_contract import SessionMetadata
from token_service.metrics import TokenServiceMetrics
from token_service.settings import TokenServiceSettings
from token_service.weather import WeatherClient

logger = logging.getLogger("token_service")

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    badge_id: str = Field(pattern=ID_PATTERN, description="The member's badge, as scanned at the kiosk")
    kiosk_id: str = Field(pattern=ID_PATTERN, description="The kiosk asking, e.g. 'accueil-1'")


class SessionResponse(BaseModel):
    session_id: str
    room: str
    token: str
    livekit_url: str
    expires_at: datetime
    member_first_name: str


class ErrorBody(BaseModel):
    detail: str


class ApiError(Exception):
    """An answer with a status and a reason the gym's developers can act on."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


@dataclass(frozen=True)
class GymKey:
    gym_id: str
    city: str
    rate_limit_per_minute: int


class Services:
    """What the routes need: settings, the PostgreSQL pool (made on first use), Redis, metrics."""

    def __init__(self, settings: TokenServiceSettings, metrics: TokenServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.redis: Any = aioredis.from_url(
            settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=30
        )
        self.weather = WeatherClient(
            settings.weather_url, self.redis,
            timeout_s=settings.weather_timeout_s, cache_ttl_s=settings.weather_cache_ttl_s,
        )
        self._pool: Any = None
        self._keys: dict[str, tuple[GymKey, float]] = {}

    async def pool(self) -> Any:
        # Made lazily so the service starts (and /readyz says why) while PostgreSQL is down.
        if self._pool is None:
            self._pool = await create_pool(
                self.settings.database_url, min_size=0, max_size=10, timeout_s=self.settings.db_timeout_s
            )
        return self._pool

    async def gym_for_key(self, key: str) -> GymKey | None:
        digest = gym_key_hash(key)
        cached = self._keys.get(digest)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        pool = await self.pool()
        row = await pool.fetchrow(
            "SELECT g.id::text AS gym_id, g.city, g.rate_limit_per_minute FROM gym_api_keys k"
            " JOIN gyms g ON g.id = k.gym_id WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
            digest,
        )
        if row is None:
            return None
        gym = GymKey(row["gym_id"], row["city"], row["rate_limit_per_minute"])
        self._keys[digest] = (gym, time.monotonic() + self.settings.api_key_cache_ttl_s)
        return gym

    async def aclose(self) -> None:
        await self.weather.aclose()
        await self.redis.aclose()
        if self._pool is not None:
            await self._pool.close()


DB_ERRORS = (DatabaseUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def authenticated_gym(request: Request, svc: Annotated[Services, Depends(services)]) -> GymKey:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "missing gym API key: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})
    try:
        gym = await svc.gym_for_key(key.strip())
    except DB_ERRORS as exc:
        raise ApiError(503, "database unavailable, retry shortly") from exc
    if gym is None:
        raise ApiError(401, "unknown or revoked gym API key", {"WWW-Authenticate": "Bearer"})
    return gym


def build_token(settings: TokenServiceSettings, meta: SessionMetadata) -> str:
    dispatch = lkapi.RoomAgentDispatch(agent_name=settings.agent_name, metadata=meta.serialize())
    return (
        lkapi.AccessToken(settings.livekit_api_key, settings.livekit_api_secret)
        .with_identity(f"kiosk-{meta.kiosk_id}")
        .with_kind("standard")
        .with_ttl(timedelta(seconds=settings.token_ttl_s))
        .with_grants(
            lkapi.VideoGrants(
                room_join=True, room=meta.room, can_publish=True, can_subscribe=True, can_publish_data=True
            )
        )
        .with_room_config(lkapi.RoomConfiguration(agents=[dispatch]))
        .to_jwt()
    )


async def open_session(svc: Services, gym: GymKey, body: SessionRequest) -> SessionResponse:
    settings = svc.settings
    now = time.time()
    window = int(now // 60)
    rate_key = f"rl:{gym.gym_id}:{window}"
    cache_key = member_cache_key(gym.gym_id, body.badge_id)
    try:
        async with svc.redis.pipeline(transaction=False) as pipe:
            pipe.incr(rate_key)
            pipe.expire(rate_key, 61)
            pipe.get(cache_key)
            pipe.get(WeatherClient.cache_key(gym.city))
            count, _, cached_member, cached_weather = await pipe.execute()
    except REDIS_ERRORS as exc:
        raise ApiError(503, "cache unavailable, retry shortly") from exc

    if count > gym.rate_limit_per_minute:
        retry_after = str(max(1, 60 - int(now % 60)))
        raise ApiError(429, "rate limit reached for this gym", {"Retry-After": retry_after})

    record: MemberRecord | None
    if cached_member is not None:
        svc.metrics.context_cache.labels("hit").inc()
        record = MemberRecord.from_cache(cached_member)
    else:
        svc.metrics.context_cache.labels("miss").inc()
        try:
            pool = await svc.pool()
            async with pool.acquire(timeout=settings.db_timeout_s) as conn:
                record = await fetch_member_by_badge(conn, body.badge_id)
        except DB_ERRORS as exc:
            raise ApiError(503, "database unavailable, retry shortly") from exc
        if record is None:
            raise ApiError(404, "unknown badge")
        if record.gym_id != gym.gym_id:
            raise ApiError(403, "this badge belongs to another gym")
        if not record.is_active:
            raise ApiError(404, "inactive badge: the membership is not active")

    weather = await svc.weather.for_city(gym.city, cached_weather)
    session_id = str(uuid.uuid4())
    meta = SessionMetadata(session_id=session_id, gym_id=gym.gym_id, member_id=record.member_id, kiosk_id=body.kiosk_id)
    context = record.context(session_id=session_id, kiosk_id=body.kiosk_id, room=meta.room, weather=weather)
    try:
        async with svc.redis.pipeline(transaction=False) as pipe:
            pipe.set(session_context_key(session_id), context.model_dump_json(), ex=settings.session_ttl_s)
            if cached_member is None:
                pipe.set(cache_key, record.to_cache(), ex=settings.context_cache_ttl_s)
            await pipe.execute()
    except REDIS_ERRORS as exc:
        raise ApiError(503, "cache unavailable, retry shortly") from exc

    token = build_token(settings, meta)
    logger.info("session %s opened gym=%s kiosk=%s cache=%s", session_id, gym.gym_id, body.kiosk_id,
                "hit" if cached_member is not None else "miss")
    return SessionResponse(
        session_id=session_id,
        room=meta.room,
        token=token,
        livekit_url=settings.kiosk_livekit_url,
        expires_at=datetime.fromtimestamp(now, UTC) + timedelta(seconds=settings.token_ttl_s),
        member_first_name=record.member.first_name,
    )


class MetricsMiddleware:
    """Counts requests by route template and status, and times them (plain ASGI: cheap)."""

    def __init__(self, app: ASGIApp, metrics: TokenServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def create_app(settings: TokenServiceSettings | None = None) -> FastAPI:
    settings = settings or TokenServiceSettings()
    if not settings.livekit_api_secret:
        raise ValueError("LIVEKIT_API_SECRET is not set: the token service cannot sign room tokens")

    metrics = TokenServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        app.state.services = Services(settings, metrics)
        yield
        await app.state.services.aclose()

    app = FastAPI(
        title="JARVIS token service",
        version="1.0.0",
        description="Issues LiveKit room tokens for gym kiosks after loading the member's context.",
        lifespan=lifespan,
    )

    @app.exception_handler(ApiError)
    async def on_api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid request: " + "; ".join(problems))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected %s on %s", type(exc).__name__, request.url.path)
        return _error(500, "internal error")

    app.add_middleware(MetricsMiddleware, metrics=metrics)

    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": why}
        for code, why in {
            401: "missing or bad gym API key", 403: "badge of another gym", 404: "unknown or inactive badge",
            422: "bad body", 429: "rate limit (see Retry-After)", 503: "database or cache unavailable",
        }.items()
    }

    @app.post("/v1/sessions", response_model=SessionResponse, status_code=201, responses=error_responses)
    async def create_session(
        body: SessionRequest,
        gym: Annotated[GymKey, Depends(authenticated_gym)],
        svc: Annotated[Services, Depends(services)],
    ) -> SessionResponse:
        """Open a kiosk session for a member's badge and return the LiveKit room token."""
        return await open_session(svc, gym, body)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorBody}})
    async def readyz(svc: Annotated[Services, Depends(services)]) -> Any:
        problems = []
        try:
            pool = await svc.pool()
            await pool.fetchval("SELECT 1", timeout=settings.db_timeout_s)
        except DB_ERRORS:
            problems.append("database unreachable")
        try:
            await svc.redis.ping()
        except REDIS_ERRORS:
            problems.append("redis unreachable")
        if problems:
            return _error(503, "; ".join(problems))
        return {"status": "ready"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(svc: Annotated[Services, Depends(services)]) -> Response:
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
