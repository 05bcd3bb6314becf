"""The token service: the gym backend asks for a kiosk session, gets a LiveKit room token.

POST /v1/sessions loads the member's context (Redis cache checked against the member's row, else
one PostgreSQL round trip), stores the snapshot under a new session id, and returns a token whose
room configuration dispatches the ``jarvis`` agent with that session id.

Cheap refusals come first: a body over ``max_body_bytes`` gets 413 unread, a wrong key costs at
most one query per key and client (token_service/keys.py). With Redis down, sessions still open
from PostgreSQL, without the per-gym rate limit (logged once per outage). Every error body is
``{"code": <stable machine-readable code>, "detail": <reason for a developer>}``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from livekit import api as lkapi
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jarvis.context import session_context_key
from jarvis.context_store import MemberRecord, fetch_member_by_badge, member_cache_key, member_stamp
from jarvis.db import DatabaseUnavailable, create_pool
from jarvis.session_contract import SessionMetadata
from token_service import rollout
from token_service.admission import Admission, OverCapacity
from token_service.errors import ApiError
from token_service.keys import BadKeyLimiter, GymKey, GymKeys, TooManyBadKeys
from token_service.metrics import TokenServiceMetrics
from token_service.rollout import Rollout
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
    code: str = Field(description="Stable and machine-readable, e.g. 'unknown_badge'")
    detail: str = Field(description="The reason, for the gym's developers")


# The same answer for a badge of another gym and a badge that does not exist: a gym cannot
# learn which badges other gyms use.
UNKNOWN_BADGE = (404, "unknown_badge", "unknown badge for this gym")


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
        self._pool_lock = asyncio.Lock()
        self.keys = GymKeys(
            self.pool, cache_ttl_s=settings.api_key_cache_ttl_s, bad_key_ttl_s=settings.bad_key_cache_ttl_s,
            bad_keys_per_minute=settings.bad_keys_per_minute,
        )
        # Redis is skipped until this monotonic time after an error (0: in use).
        self._redis_retry_at = 0.0
        # Issue 13: the rollout flags (PostgreSQL, read again every rollout_refresh_s) and admission.
        self.rollout = Rollout(self.pool, refresh_s=settings.rollout_refresh_s, timeout_s=settings.db_timeout_s)
        self.admission = Admission(
            self.redis, settings.agent_name, metrics.registry, pending_s=settings.admission_pending_s,
            retry_after_s=settings.admission_retry_after_s,
        ) if settings.admission_control else None

    async def pool(self) -> Any:
        # Made lazily so the service starts (and /readyz says why) while PostgreSQL is down. One at a
        # time: the first requests of a flood would otherwise each make a pool (and a connection).
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await create_pool(
                        self.settings.database_url, min_size=0, max_size=10, timeout_s=self.settings.db_timeout_s
                    )
        return self._pool

    def redis_in_use(self) -> bool:
        return time.monotonic() >= self._redis_retry_at

    def redis_failed(self, exc: Exception) -> None:
        if self._redis_retry_at == 0.0:
            logger.warning(
                "redis unavailable (%s): sessions open from PostgreSQL without rate limits or context cache"
                " until it answers again", type(exc).__name__,
            )
        self._redis_retry_at = time.monotonic() + self.settings.redis_retry_s

    def redis_answered(self) -> None:
        if self._redis_retry_at != 0.0:
            logger.warning("redis answers again: rate limits and context cache back on")
            self._redis_retry_at = 0.0

    async def aclose(self) -> None:
        await self.keys.aclose()
        await self.rollout.aclose()
        await self.weather.aclose()
        await self.redis.aclose()
        if self._pool is not None:
            await self._pool.close()


DB_ERRORS = (DatabaseUnavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
# AuthenticationError (a wrong password) is a ConnectionError.
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


async def services(request: Request) -> Services:
    # async: a plain def dependency costs every request a hop to the thread pool.
    return request.app.state.services  # type: ignore[no-any-return]


# Declares the bearer scheme in OpenAPI; authenticated_gym reads the header and answers with our codes.
gym_bearer = HTTPBearer(scheme_name="GymApiKey", description="The gym's API key", auto_error=False)


async def authenticated_gym(request: Request, svc: Annotated[Services, Depends(services)]) -> GymKey:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise missing_key_error()
    # Behind a proxy, uvicorn puts the forwarded client here (FORWARDED_ALLOW_IPS names trusted proxies).
    client = request.client.host if request.client else "unknown"
    try:
        gym = await svc.keys.gym_for_key(key.strip(), client)
    except TooManyBadKeys as exc:
        raise too_many_bad_keys_error(exc) from exc
    except DB_ERRORS as exc:
        raise ApiError(503, "database_unavailable", "database unavailable, retry shortly") from exc
    if gym is None:
        raise bad_key_error()
    return gym


def missing_key_error() -> ApiError:
    return ApiError(
        401, "missing_api_key", "missing gym API key: send 'Authorization: Bearer <key>'",
        {"WWW-Authenticate": "Bearer"},
    )


def bad_key_error() -> ApiError:
    return ApiError(401, "bad_api_key", "unknown or revoked gym API key", {"WWW-Authenticate": "Bearer"})


def too_many_bad_keys_error(exc: TooManyBadKeys) -> ApiError:
    return ApiError(
        429, "too_many_bad_keys", "too many wrong gym API keys from this client, retry later",
        {"Retry-After": str(exc.retry_after_s)},
    )


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


async def load_member(svc: Services, gym: GymKey, badge_id: str, cached: bytes | None) -> tuple[MemberRecord, str]:
    """The member of this gym with this badge, and "hit" or "miss". One query either way: a cached
    context is checked against the member's row (the badge may have changed hands, the member may
    have left or moved); a miss reads the whole context."""
    cached_record = MemberRecord.from_cache(cached) if cached is not None else None
    try:
        pool = await svc.pool()
        async with pool.acquire(timeout=svc.settings.db_timeout_s) as conn:
            if cached_record is not None:
                stamp = await member_stamp(conn, gym.gym_id, badge_id)
                if stamp is None:
                    raise ApiError(*UNKNOWN_BADGE)
                if stamp == (cached_record.member_id, True, cached_record.version):
                    return cached_record, "hit"
            record = await fetch_member_by_badge(conn, gym.gym_id, badge_id)
    except DB_ERRORS as exc:
        raise ApiError(503, "database_unavailable", "database unavailable, retry shortly") from exc
    if record is None:
        raise ApiError(*UNKNOWN_BADGE)
    if not record.is_active:
        raise ApiError(404, "inactive_badge", "inactive badge: the membership is not active")
    return record, "miss"


async def open_session(svc: Services, gym: GymKey, body: SessionRequest) -> SessionResponse:
    settings = svc.settings
    # Rollout first (token_service/rollout.py): a kiosk sent back to the old provider costs nothing more.
    per_member = await svc.rollout.check(gym.gym_id, body.kiosk_id, member_id=None) is None
    if svc.admission is not None:  # full: refused now, before any other work
        await svc.admission.check(redis_down=not svc.redis_in_use())
    now = time.time()
    window = int(now // 60)
    rate_key = f"rl:{gym.gym_id}:{window}"
    cache_key = member_cache_key(gym.gym_id, body.badge_id)
    use_redis = svc.redis_in_use()
    cached_member = cached_weather = None
    if use_redis:
        try:
            async with svc.redis.pipeline(transaction=False) as pipe:
                pipe.incr(rate_key)
                pipe.expire(rate_key, 61)
                pipe.get(cache_key)
                pipe.get(WeatherClient.cache_key(gym.city))
                count, _, cached_member, cached_weather = await pipe.execute()
            svc.redis_answered()
        except REDIS_ERRORS as exc:
            svc.redis_failed(exc)
            use_redis = False
        else:
            if count > gym.rate_limit_per_minute:
                retry_after = str(max(1, 60 - int(now % 60)))
                raise ApiError(429, "rate_limited", "rate limit reached for this gym", {"Retry-After": retry_after})

    record, cache = await load_member(svc, gym, body.badge_id, cached_member)
    svc.metrics.context_cache.labels(cache).inc()
    if per_member:  # percent rollout: sticky per member
        await svc.rollout.check(gym.gym_id, body.kiosk_id, member_id=record.member_id)

    weather = await svc.weather.for_city(gym.city, cached_weather)
    session_id = str(uuid.uuid4())
    meta = SessionMetadata(session_id=session_id, gym_id=gym.gym_id, member_id=record.member_id, kiosk_id=body.kiosk_id)
    if svc.admission is not None:  # before the room exists (token_service/admission.py)
        await svc.admission.admit(meta.room, redis_down=not svc.redis_in_use())
    context = record.context(session_id=session_id, kiosk_id=body.kiosk_id, room=meta.room, weather=weather)
    if use_redis:
        try:
            async with svc.redis.pipeline(transaction=False) as pipe:
                pipe.set(session_context_key(session_id), context.model_dump_json(), ex=settings.session_ttl_s)
                if cache == "miss":
                    pipe.set(cache_key, record.to_cache(), ex=settings.context_cache_ttl_s)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            # The worker rebuilds the context from PostgreSQL when the snapshot is missing.
            svc.redis_failed(exc)
            use_redis = False

    token = build_token(settings, meta)
    logger.info("session %s opened gym=%s kiosk=%s cache=%s", session_id, gym.gym_id, body.kiosk_id,
                cache if use_redis else "off (redis unavailable)")
    return SessionResponse(
        session_id=session_id,
        room=meta.room,
        token=token,
        livekit_url=settings.kiosk_livekit_url,
        expires_at=datetime.fromtimestamp(now, UTC) + timedelta(seconds=settings.token_ttl_s),
        member_first_name=record.member.first_name,
    )


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``, before anything reads it or queries for it.

    A declared Content-Length over the bound is refused before a byte of the body is read (the
    server then drops the rest as it arrives: closing instead would reset the client before it
    reads the 413). A body without a length (chunked) is read up to the bound only."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await self.refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)  # the server delivers no more than the declared length
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self.refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = _error(413, "body_too_large", f"request body over {self.max_bytes} bytes")
        await response(scope, receive, send)


SESSIONS_ROUTE = "/v1/sessions"
# The route template for the metrics of a request answered before routing (KeyGate).
ROUTE_LABEL = "jarvis.route"


class KeyGate:
    """The refusals that need no query, answered before FastAPI parses anything (a flood of them
    then costs little more than uvicorn's own work): no key, a key known wrong, an unknown key from
    a client over its wrong-key allowance. Anything else goes on to the route, which looks it up."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SESSIONS_ROUTE or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        refusal: Response | None = None
        if scheme.lower() != "bearer" or not key.strip():
            refusal = MISSING_KEY
        else:
            client = scope["client"][0] if scope.get("client") else "unknown"
            keys: GymKeys = scope["app"].state.services.keys
            answer = keys.answer_from_memory(key.strip(), client)
            if answer == "wrong":
                refusal = BAD_KEY
            elif answer == "too many wrong":
                refusal = too_many_bad_keys_response(BadKeyLimiter.retry_after_s(time.time()))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        scope[ROUTE_LABEL] = SESSIONS_ROUTE
        await refusal(scope, receive, send)


def server_timing_ms(server_timing: str | None) -> float | None:
    """The service's own time for an answer, in ms, from its `Server-Timing` header's value (None: absent)."""
    name, _, duration = (server_timing or "").partition(";dur=")
    return float(duration) if name == "app" and duration else None


class MetricsMiddleware:
    """Counts requests by route template and status, and times them (plain ASGI: cheap). Every
    answer says how long the service itself took (`Server-Timing: app;dur=<ms>`), so that the
    gym's backend can tell the service's time from the network's and its own host's."""

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
                took = f"app;dur={1000 * (time.perf_counter() - started):.1f}".encode()
                message = {**message, "headers": [*message.get("headers", ()), (b"server-timing", took)]}
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = getattr(scope.get("route"), "path", None) or scope.get(ROUTE_LABEL, "unmatched")
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "detail": detail}, status_code=status, headers=headers)


def _rendered(error: ApiError) -> Response:
    return _error(error.status, error.code, error.detail, error.headers)


# The gate's refusals, rendered once: a response is sent as it is (no JSON encoding or header building
# per request), so a flood of random keys costs the service what a flood without a key costs.
MISSING_KEY = _rendered(missing_key_error())
BAD_KEY = _rendered(bad_key_error())


@functools.cache
def too_many_bad_keys_response(retry_after_s: int) -> Response:
    """One per Retry-After value (1 to 60 s)."""
    return _rendered(too_many_bad_keys_error(TooManyBadKeys(retry_after_s)))


def create_app(settings: TokenServiceSettings | None = None) -> FastAPI:
    settings = settings or TokenServiceSettings()
    if not settings.livekit_api_secret:
        raise ValueError("LIVEKIT_API_SECRET is not set: the token service cannot sign room tokens")

    metrics = TokenServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        app.state.services = Services(settings, metrics)
        app.state.rollout = app.state.services.rollout
        yield
        await app.state.services.aclose()

    app = FastAPI(
        title="JARVIS token service",
        version="1.0.0",
        description="Issues LiveKit room tokens for gym kiosks after loading the member's context.",
        lifespan=lifespan,
    )
    app.state.admin_api_key = settings.admin_api_key.get_secret_value() if settings.admin_api_key else ""

    @app.exception_handler(ApiError)
    async def on_api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(OverCapacity)
    async def on_over_capacity(_request: Request, exc: OverCapacity) -> JSONResponse:
        return _error(503, "over_capacity", "every JARVIS worker is busy: retry after Retry-After seconds",
                      {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown route, wrong method: the same body shape as every other error.
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid_request", "invalid request: " + "; ".join(problems))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected %s on %s", type(exc).__name__, request.url.path)
        return _error(500, "internal_error", "internal error")

    # Outermost last: metrics, then the body bound, then the key gate, then FastAPI.
    app.add_middleware(KeyGate)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": why}
        for code, why in {
            401: "missing_api_key, bad_api_key",
            403: "jarvis_disabled: the rollout flag sends this kiosk or member to the current provider",
            404: "unknown_badge (also a badge of another gym), inactive_badge",
            413: "body_too_large", 422: "invalid_request",
            429: "rate_limited (the gym), too_many_bad_keys (this client); see Retry-After",
            503: "over_capacity (see Retry-After), database_unavailable",
        }.items()
    }

    @app.post(SESSIONS_ROUTE, response_model=SessionResponse, status_code=201, responses=error_responses,
              dependencies=[Depends(gym_bearer)])
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
        try:
            await svc.redis.ping()
            redis_state = "ok"
        except REDIS_ERRORS:
            redis_state = "unreachable"
        try:
            pool = await svc.pool()
            await pool.fetchval("SELECT 1", timeout=settings.db_timeout_s)
        except DB_ERRORS:
            return _error(503, "not_ready", f"database unreachable; redis {redis_state}")
        if redis_state != "ok":
            # Still serving (from PostgreSQL, without rate limits): a load balancer must keep us in.
            return {"status": "degraded", "detail": "redis unreachable: sessions open without rate limits"}
        return {"status": "ready"}

    app.include_router(rollout.router, responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(svc: Annotated[Services, Depends(services)]) -> Response:
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
