"""The token API as a gym backend sees it: every answer, good and bad, on the real stack."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jarvis.db import gym_key_hash
from jarvis_local.kiosk_sim import poll
from jarvis_local.pg_stats import statement_calls
from jarvis_local.stack import LocalStack, free_port
from tests.conftest import BORDEAUX_KEY, CAMILLE, LYON_GYM_ID, LYON_KEY
from tests.platform.gym_factory import create_gym, within_one_rate_window
from token_service.app import create_app
from token_service.settings import TokenServiceSettings


def settings_for(stack: LocalStack, **overrides: object) -> TokenServiceSettings:
    values: dict[str, object] = {
        "database_url": stack.pg_dsn,
        "redis_url": stack.redis_url,
        "livekit_url": stack.livekit_url,
        "livekit_api_key": stack.livekit_api_key,
        "livekit_api_secret": stack.livekit_api_secret,
        # No kiosk ever uses these tokens: admission control (test_admission.py) would count them as
        # sessions on their way to the session's worker and refuse the 26th within 15 s.
        "admission_control": False,
        **overrides,
    }
    return TokenServiceSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def client_for(stack: LocalStack) -> AsyncIterator[object]:
    """Build an in-process token service with given settings, lifespan included."""
    opened = []

    async def make(**overrides: object) -> httpx.AsyncClient:
        app = create_app(settings_for(stack, **overrides))
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://token")
        opened.append((lifespan, client))
        return client

    yield make
    for lifespan, client in opened:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def ask(client: httpx.AsyncClient, key: str | None, body: object) -> object:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/v1/sessions", json=body, headers=headers)


async def test_gym_backend_gets_a_token_for_its_member(stack: LocalStack, client_for) -> None:
    client = await client_for()
    r = await ask(client, LYON_KEY, {"badge_id": CAMILLE["badge_id"], "kiosk_id": "accueil-1"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"session_id", "room", "token", "livekit_url", "expires_at", "member_first_name"}
    claims = jwt.decode(body["token"], stack.livekit_api_secret, algorithms=["HS256"], options={"verify_aud": False})
    assert claims["sub"] == "kiosk-accueil-1"
    assert claims["video"]["room"] == body["room"] and claims["video"]["roomJoin"] is True
    assert claims["exp"] - claims["nbf"] <= 600
    dispatch = claims["roomConfig"]["agents"][0]
    assert dispatch["agentName"] == "jarvis"
    assert body["session_id"] in dispatch["metadata"] and LYON_GYM_ID in dispatch["metadata"]
    assert "Camille" not in dispatch["metadata"]


async def test_gym_key_cannot_open_a_session_for_another_gyms_member(client_for) -> None:
    client = await client_for()
    unknown = await ask(client, BORDEAUX_KEY, {"badge_id": "BDX-NOPE-1", "kiosk_id": "accueil-1"})
    r = await ask(client, BORDEAUX_KEY, {"badge_id": CAMILLE["badge_id"], "kiosk_id": "accueil-1"})
    # The same answer as a badge nobody has: Bordeaux cannot learn that Lyon uses this badge.
    assert (r.status_code, r.json()) == (unknown.status_code, unknown.json())
    assert r.json() == {"code": "unknown_badge", "detail": "unknown badge for this gym"}
    # and the other way round, after Camille's context is warm in the cache under Lyon
    await ask(client, LYON_KEY, {"badge_id": CAMILLE["badge_id"], "kiosk_id": "accueil-1"})
    r = await ask(client, BORDEAUX_KEY, {"badge_id": CAMILLE["badge_id"], "kiosk_id": "accueil-1"})
    assert (r.status_code, r.json()) == (unknown.status_code, unknown.json())


@pytest.mark.parametrize(
    ("key", "body", "status", "code", "reason"),
    [
        (None, {"badge_id": "LYON-0001", "kiosk_id": "k1"}, 401, "missing_api_key", "missing gym API key"),
        ("not-a-key", {"badge_id": "LYON-0001", "kiosk_id": "k1"}, 401, "bad_api_key", "unknown or revoked"),
        (LYON_KEY, {"badge_id": "LYON-9999", "kiosk_id": "k1"}, 404, "unknown_badge", "unknown badge"),
        (LYON_KEY, {"badge_id": "LYON-0003", "kiosk_id": "k1"}, 404, "inactive_badge", "inactive badge"),
        (LYON_KEY, {"kiosk_id": "k1"}, 422, "invalid_request", "badge_id"),
        (LYON_KEY, {"badge_id": "LYON-0001", "kiosk_id": "../etc"}, 422, "invalid_request", "kiosk_id"),
        (LYON_KEY, {"badge_id": "LYON-0001", "kiosk_id": "k1", "admin": True}, 422, "invalid_request", "admin"),
        (LYON_KEY, ["LYON-0001"], 422, "invalid_request", "invalid request"),
    ],
)
async def test_bad_requests_get_a_clear_reason(client_for, key, body, status, code, reason) -> None:
    client = await client_for()
    r = await ask(client, key, body)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    assert reason in r.json()["detail"]
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


# The key lookups PostgreSQL runs (token_service/keys.py): one key on a request's path, or every
# known key again in the background.
PER_KEY, RECHECK = "k.key_hash = $1", "k.key_hash = ANY($1"


async def test_a_revoked_key_is_refused_within_the_key_cache_time_and_the_others_keep_working(
    stack: LocalStack, client_for
) -> None:
    """Two gyms' backends open sessions → for 2.5 key-cache times, no request of theirs waits for a
    key lookup (the service checks every known key again in the background, in one query) → one
    gym's key is revoked in the database → its next requests are refused within the key cache's
    time, without a restart → the other gym never noticed."""
    ttl_s = 1.0
    revoked, other = await create_gym(stack.pg_dsn), await create_gym(stack.pg_dsn)
    client = await client_for(api_key_cache_ttl_s=ttl_s)
    for gym in (revoked, other):
        assert (await ask(client, gym.api_key, {"badge_id": gym.badge_id, "kiosk_id": "k1"})).status_code == 201

    lookups, rechecks = await statement_calls(stack.pg_dsn, PER_KEY), await statement_calls(stack.pg_dsn, RECHECK)
    for n in range(10):
        r = await ask(client, other.api_key, {"badge_id": other.badge_id, "kiosk_id": f"k{n}"})
        assert r.status_code == 201, r.text
        await asyncio.sleep(ttl_s / 4)
    assert await statement_calls(stack.pg_dsn, PER_KEY) == lookups
    assert await statement_calls(stack.pg_dsn, RECHECK) - rechecks >= 2

    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        await conn.execute("UPDATE gym_api_keys SET revoked_at = now() WHERE key_hash = $1",
                           gym_key_hash(revoked.api_key))
    finally:
        await conn.close()
    revoked_at = time.monotonic()

    async def refused() -> bool:
        r = await ask(client, revoked.api_key, {"badge_id": revoked.badge_id, "kiosk_id": "k1"})
        return r.status_code == 401 and r.json()["code"] == "bad_api_key"

    await poll(refused, 10, every_s=0.05, what="the revoked key refused")
    assert time.monotonic() - revoked_at < ttl_s + 0.5
    assert (await ask(client, other.api_key, {"badge_id": other.badge_id, "kiosk_id": "k2"})).status_code == 201


async def test_busy_gym_is_rate_limited_with_retry_after(stack: LocalStack, client_for) -> None:
    gym = await create_gym(stack.pg_dsn, rate_limit_per_minute=3)
    client = await client_for()
    await within_one_rate_window()
    statuses = [
        (await ask(client, gym.api_key, {"badge_id": gym.badge_id, "kiosk_id": "k1"})).status_code for _ in range(3)
    ]
    assert statuses == [201, 201, 201]
    r = await ask(client, gym.api_key, {"badge_id": gym.badge_id, "kiosk_id": "k1"})
    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # another gym is not affected
    assert (await ask(client, LYON_KEY, {"badge_id": "LYON-0002", "kiosk_id": "k1"})).status_code == 201


async def test_database_down_gives_503_with_a_reason(client_for) -> None:
    client = await client_for(database_url=f"postgresql://jarvis@127.0.0.1:{free_port()}/jarvis", db_timeout_s=0.5)
    r = await ask(client, LYON_KEY, {"badge_id": "LYON-0001", "kiosk_id": "k1"})
    assert r.status_code == 503
    assert r.json() == {"code": "database_unavailable", "detail": "database unavailable, retry shortly"}
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and "database unreachable" in ready.json()["detail"]


async def test_unreachable_redis_still_opens_sessions_from_postgresql(client_for) -> None:
    client = await client_for(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    r = await ask(client, LYON_KEY, {"badge_id": "LYON-0001", "kiosk_id": "k1"})
    assert r.status_code == 201, r.text
    ready = await client.get("/readyz")
    # Still serving: a load balancer must keep this instance in.
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"


async def test_context_is_cached_and_metrics_count_hits(stack: LocalStack, client_for) -> None:
    gym = await create_gym(stack.pg_dsn)
    client = await client_for()
    for _ in range(3):
        assert (await ask(client, gym.api_key, {"badge_id": gym.badge_id, "kiosk_id": "k1"})).status_code == 201
    text = (await client.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
    assert samples[("jarvis_token_context_cache_total", (("result", "miss"),))] == 1
    assert samples[("jarvis_token_context_cache_total", (("result", "hit"),))] == 2
    assert samples[("jarvis_token_requests_total", (("route", "/v1/sessions"), ("status", "201")))] == 3
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    assert "/v1/sessions" in (await client.get("/openapi.json")).json()["paths"]


@pytest.fixture
async def weather_provider() -> AsyncIterator[dict[str, object]]:
    """A stand-in weather HTTP provider; tests set its delay."""
    from aiohttp import web

    state: dict[str, object] = {"delay_s": 0.0, "calls": 0}

    async def handle(request: web.Request) -> web.Response:
        import asyncio

        state["calls"] = int(state["calls"]) + 1  # type: ignore[call-overload]
        await asyncio.sleep(float(state["delay_s"]))  # type: ignore[arg-type]
        return web.json_response({"description": f"ciel dégagé à {request.query['city']}", "temperature_c": 21.5})

    app = web.Application()
    app.router.add_get("/weather", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state["url"] = f"http://127.0.0.1:{port}/weather"
    yield state
    await runner.cleanup()


async def test_weather_joins_the_context_and_a_slow_provider_never_blocks(
    stack: LocalStack, client_for, weather_provider
) -> None:
    import json
    import time

    import redis.asyncio as aioredis

    gym = await create_gym(stack.pg_dsn, city="Brest")
    client = await client_for(weather_url=weather_provider["url"], weather_timeout_s=0.2)
    store = aioredis.from_url(stack.redis_url)

    # The provider takes 1.5 s (under the client's 2 s HTTP timeout, so its answer is still cached);
    # the session waits at most the 0.2 s timeout (the bound leaves room for the first request's
    # database pool on a loaded box, still below the provider's 1.5 s).
    weather_provider["delay_s"] = 1.5
    started = time.perf_counter()
    r = await ask(client, gym.api_key, {"badge_id": gym.badge_id, "kiosk_id": "k1"})
    waited_ms = 1000 * (time.perf_counter() - started)
    assert r.status_code == 201 and waited_ms < 1200, f"session waited {waited_ms:.0f} ms on the weather"
    snapshot = json.loads(await store.get(f"session:{r.json()['session_id']}:context"))
    assert snapshot["weather"] is None

    # the slow answer still lands in the weather cache for the next member (once it came)
    from jarvis_local.kiosk_sim import poll
    from token_service.weather import WeatherClient

    await poll(lambda: store.exists(WeatherClient.cache_key("Brest")), 10, every_s=0.1, what="the weather cache")
    r = await ask(client, gym.api_key, {"badge_id": gym.badge_id, "kiosk_id": "k1"})
    snapshot = json.loads(await store.get(f"session:{r.json()['session_id']}:context"))
    assert snapshot["weather"] == {"description": "ciel dégagé à Brest", "temperature_c": 21.5}
    assert weather_provider["calls"] == 1
    assert 3590 <= await store.ttl(f"session:{r.json()['session_id']}:context") <= 3600
    await store.aclose()
