"""The token service as an attacker and an SRE see it (issue 14): oversized bodies, random-key
floods, badges that change hands, another gym's badges, Redis with a password and Redis stopped.

Every "no query" claim is PostgreSQL's own count (pg_stat_statements), not the service's.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import jwt
import pytest
import redis.asyncio as aioredis

from jarvis_local.kiosk_sim import poll
from jarvis_local.pg_stats import statement_calls
from jarvis_local.stack import LocalStack, free_port, wait_for_port
from tests.platform.gym_factory import create_gym, within_one_rate_window
from token_service.app import create_app
from token_service.settings import TokenServiceSettings

GYM_BACKEND = "192.0.2.10"  # the real gym's server
ATTACKER = "198.51.100.66"
KEY_LOOKUP = "FROM gym_api_keys"

MakeClient = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def token_app(stack: LocalStack) -> AsyncIterator[MakeClient]:
    """An in-process token service on the real stack; ``make(client_ip, **settings)`` gives a client
    seen from that address (several clients of one service share it)."""
    apps: dict[tuple[object, ...], object] = {}
    opened: list[object] = []

    async def make(client_ip: str = GYM_BACKEND, **overrides: object) -> httpx.AsyncClient:
        key = tuple(sorted(overrides.items()))
        if key not in apps:
            values: dict[str, object] = {
                "database_url": stack.pg_dsn, "redis_url": stack.redis_url, "livekit_url": stack.livekit_url,
                "livekit_api_key": stack.livekit_api_key, "livekit_api_secret": stack.livekit_api_secret,
                # No kiosk uses these tokens: admission control (test_admission.py) would count them
                # as sessions on their way to the session's worker.
                "admission_control": False,
                **overrides,
            }
            app = create_app(TokenServiceSettings(**values))  # type: ignore[arg-type]
            lifespan = app.router.lifespan_context(app)
            await lifespan.__aenter__()
            opened.append(lifespan)
            apps[key] = app
        transport = httpx.ASGITransport(app=apps[key], client=(client_ip, 40000))  # type: ignore[arg-type]
        client = httpx.AsyncClient(transport=transport, base_url="http://token")
        opened.append(client)
        return client

    yield make
    for thing in reversed(opened):
        if isinstance(thing, httpx.AsyncClient):
            await thing.aclose()
        else:
            await thing.__aexit__(None, None, None)  # type: ignore[attr-defined]


def session_body(badge: str) -> dict[str, str]:
    return {"badge_id": badge, "kiosk_id": "accueil-1"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_random_key_flood_costs_no_query_per_key_and_the_gym_keeps_working(
    stack: LocalStack, token_app: MakeClient
) -> None:
    gym = await create_gym(stack.pg_dsn, rate_limit_per_minute=100_000)
    attacker = await token_app(ATTACKER)
    backend = await token_app(GYM_BACKEND)
    before = await statement_calls(stack.pg_dsn, KEY_LOOKUP)

    answers: dict[tuple[int, str], int] = {}
    gym_statuses: list[int] = []

    async def flood(keys: list[str]) -> None:
        for key in keys:
            r = await attacker.post("/v1/sessions", json=session_body("T-0"), headers=bearer(key))
            answers[(r.status_code, r.json()["code"])] = answers.get((r.status_code, r.json()["code"]), 0) + 1

    async def gym_at_work() -> None:
        for _ in range(20):
            r = await backend.post("/v1/sessions", json=session_body(gym.badge_id), headers=bearer(gym.api_key))
            gym_statuses.append(r.status_code)
            await asyncio.sleep(0.05)

    random_keys = [secrets.token_urlsafe(24) for _ in range(2000)]
    # The flood and the guess after it in one window of the per-client limit: a guess that fell in
    # the next minute was rightly answered 401, as the first wrong key of its window (CI, Dec 5).
    await within_one_rate_window(15)  # the flood takes 1.5 s here
    flood_started = time.monotonic()
    await asyncio.gather(*(flood(random_keys[i::16]) for i in range(16)), gym_at_work())
    lookups = await statement_calls(stack.pg_dsn, KEY_LOOKUP) - before

    flood_s = time.monotonic() - flood_started
    print(f"\n2000 random keys in {flood_s:.1f} s: answers {answers}, key lookups in PostgreSQL {lookups}")
    assert gym_statuses == [201] * 20, answers
    assert set(answers) <= {(401, "bad_api_key"), (429, "too_many_bad_keys")}
    # 20 wrong keys per client and minute (twice if the flood straddles a minute), plus the gym's own key.
    assert lookups <= 2 * 20 + 1
    assert answers[(429, "too_many_bad_keys")] >= 2000 - 40

    # The gym's key still works from the attacker's own address (a shared NAT): it is known good.
    r = await attacker.post("/v1/sessions", json=session_body(gym.badge_id), headers=bearer(gym.api_key))
    assert r.status_code == 201
    r = await attacker.post("/v1/sessions", json=session_body(gym.badge_id), headers=bearer("yet-another-guess"))
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60


async def test_a_backend_retrying_a_wrong_key_costs_one_query(stack: LocalStack, token_app: MakeClient) -> None:
    client = await token_app("203.0.113.5")
    wrong_key = f"revoked-{secrets.token_hex(8)}"
    before = await statement_calls(stack.pg_dsn, KEY_LOOKUP)
    statuses = {(await client.post("/v1/sessions", json=session_body("T-0"), headers=bearer(wrong_key))).status_code
                for _ in range(15)}
    assert statuses == {401}
    assert await statement_calls(stack.pg_dsn, KEY_LOOKUP) - before == 1


async def test_a_10_mb_body_gets_413_before_any_query(
    stack: LocalStack, token_app: MakeClient, token_service_url: str
) -> None:
    gym = await create_gym(stack.pg_dsn)  # a key neither service has seen: checking it would need a query
    client = await token_app()
    ten_mb = b'{"badge_id": "' + b"A" * 10_000_000 + b'", "kiosk_id": "k1"}'
    before = await statement_calls(stack.pg_dsn, KEY_LOOKUP, "gym_members")

    headers = {**bearer(gym.api_key), "content-type": "application/json"}
    r = await client.post("/v1/sessions", content=ten_mb, headers=headers)
    assert r.status_code == 413
    assert r.json() == {"code": "body_too_large", "detail": "request body over 4096 bytes"}

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: read up to the bound only
        for start in range(0, len(ten_mb), 65536):
            yield ten_mb[start:start + 65536]

    r = await client.post("/v1/sessions", content=chunked(), headers=headers)
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"

    # and over the network, to the service as it runs (uvicorn)
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{token_service_url}/v1/sessions", content=ten_mb, headers=headers)
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"

    # Neither service looked the key or the badge up.
    assert await statement_calls(stack.pg_dsn, KEY_LOOKUP, "gym_members") == before
    r = await client.post("/v1/sessions", json=session_body(gym.badge_id), headers=bearer(gym.api_key))
    assert r.status_code == 201


async def test_a_reassigned_badge_takes_effect_on_the_next_request(stack: LocalStack, token_app: MakeClient) -> None:
    gym = await create_gym(stack.pg_dsn)
    other_gym = await create_gym(stack.pg_dsn)
    client = await token_app()

    async def who() -> tuple[int, str]:
        r = await client.post("/v1/sessions", json=session_body(gym.badge_id), headers=bearer(gym.api_key))
        if r.status_code != 201:
            return r.status_code, r.json()["code"]
        meta = jwt.decode(r.json()["token"], stack.livekit_api_secret, algorithms=["HS256"],
                          options={"verify_aud": False})["roomConfig"]["agents"][0]["metadata"]
        assert r.json()["member_first_name"] in ("Alex", "Brune", "Bruna")
        return 201, f"{r.json()['member_first_name']} {'old' if gym.member_id in meta else 'new'}"

    assert await who() == (201, "Alex old")
    assert await who() == (201, "Alex old")  # now from the cache
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        # The front desk gives Alex's badge to Brune, who just joined.
        async with conn.transaction():
            await conn.execute("UPDATE gym_members SET badge_id = badge_id || '-lost' WHERE id = $1", gym.member_id)
            brune = await conn.fetchval(
                "INSERT INTO gym_members (gym_id, badge_id, first_name) VALUES ($1, $2, 'Brune') RETURNING id::text",
                gym.gym_id, gym.badge_id,
            )
        assert await who() == (201, "Brune new")
        await conn.execute("UPDATE gym_members SET first_name = 'Bruna' WHERE id = $1", brune)
        assert await who() == (201, "Bruna new")
        await conn.execute("UPDATE gym_members SET is_active = false WHERE id = $1", brune)
        assert await who() == (404, "inactive_badge")
        # Brune moves to another gym of the chain: this gym does not know the badge any more.
        await conn.execute(
            "UPDATE gym_members SET is_active = true, gym_id = $2 WHERE id = $1", brune, other_gym.gym_id
        )
        assert await who() == (404, "unknown_badge")
    finally:
        await conn.close()


@pytest.fixture
def redis_with_password() -> Iterator[dict[str, object]]:
    """A redis-server of the test's own, with requirepass, that the test may stop and start again."""
    workdir = Path(tempfile.mkdtemp(prefix="jarvis-redis-"))
    password = secrets.token_urlsafe(16)
    port = free_port()
    state: dict[str, object] = {"password": password, "port": port, "url": f"redis://:{password}@127.0.0.1:{port}/0"}

    def start() -> None:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--requirepass", password],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        wait_for_port(port, "redis-server", proc, 15)
        state["proc"] = proc

    def stop() -> None:
        proc: subprocess.Popen[bytes] = state.pop("proc")  # type: ignore[assignment]
        proc.terminate()
        proc.wait(10)

    state["start"], state["stop"] = start, stop
    start()
    yield state
    if "proc" in state:
        stop()


async def test_redis_with_a_password_then_stopped_then_back(
    stack: LocalStack, token_app: MakeClient, redis_with_password: dict[str, object],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gym = await create_gym(stack.pg_dsn, rate_limit_per_minute=2)
    password = str(redis_with_password["password"])
    client = await token_app(redis_url=redis_with_password["url"], redis_retry_s=0.3)
    store = aioredis.from_url(str(redis_with_password["url"]))
    caplog.set_level(logging.INFO, logger="token_service")

    async def ask() -> httpx.Response:
        return await client.post("/v1/sessions", json=session_body(gym.badge_id), headers=bearer(gym.api_key))

    # With the password: the snapshot is in Redis and the gym's rate limit holds.
    await within_one_rate_window()
    first = await ask()
    assert first.status_code == 201, first.text
    assert await store.exists(f"session:{first.json()['session_id']}:context")
    assert (await ask()).status_code == 201
    assert (await ask()).json()["code"] == "rate_limited"
    await store.aclose()

    # Redis stopped for real: sessions open from PostgreSQL, without the rate limit, and the log says so.
    redis_with_password["stop"]()  # type: ignore[operator]
    assert [(await ask()).status_code for _ in range(3)] == [201, 201, 201]
    outage = [r.getMessage() for r in caplog.records if r.getMessage().startswith("redis unavailable")]
    assert len(outage) == 1 and "without rate limits" in outage[0]
    assert (await client.get("/readyz")).json()["status"] == "degraded"

    # Back: after redis_retry_s the service uses it again (a fresh Redis, so a fresh count).
    await within_one_rate_window()
    redis_with_password["start"]()  # type: ignore[operator]
    await asyncio.sleep(0.4)
    assert [(await ask()).status_code for _ in range(3)] == [201, 201, 429]
    assert any("redis answers again" in r.getMessage() for r in caplog.records)

    # A wrong password is an unreachable Redis, not a failed session; the password is never logged.
    wrong = await token_app(redis_url=str(redis_with_password["url"]).replace(password, "wrong-password"))
    r = await wrong.post("/v1/sessions", json=session_body(gym.badge_id), headers=bearer(gym.api_key))
    assert r.status_code == 201
    assert any("AuthenticationError" in rec.getMessage() for rec in caplog.records)
    assert password not in caplog.text and "wrong-password" not in caplog.text


async def test_a_session_token_starts_one_job_only(
    stack: LocalStack, token_service_url: str, agent_worker: LocalStack
) -> None:
    from livekit import rtc

    from jarvis_local.kiosk_sim import agent_participant, joined_with_jarvis, open_session, poll, room_names
    from tests.conftest import CAMILLE, LYON_KEY

    session = await open_session(token_service_url, LYON_KEY, CAMILLE["badge_id"])
    try:
        room, _ = await joined_with_jarvis(session)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the worker's log:\n{stack.log_tail('agent', 60)}") from None
    await room.disconnect()

    async def room_gone() -> bool:
        return session["room"] not in await room_names(stack)

    await poll(room_gone, 30, every_s=0.2, what="the room to close after the kiosk left")

    # The same token again, still within its TTL: LiveKit makes the room and dispatches a job anew.
    again = rtc.Room()
    left = asyncio.Event()
    again.on("disconnected", lambda *_: left.set())
    await again.connect(session["livekit_url"], session["token"])
    await asyncio.wait_for(left.wait(), 30)  # the worker refused the job and closed the room
    assert agent_participant(again) is None

    def refusals() -> list[str]:
        return [line for line in stack.log_tail("agent", 400).splitlines()
                if f"session {session['session_id']}: job" in line and "refused" in line]

    # The job process's log line reaches the worker's log shortly after the room is gone.
    await poll(refusals, 15, every_s=0.2, what="the worker's refusal in its log")
    assert len(refusals()) == 1, refusals()


async def test_a_spent_session_is_refused_by_redis_or_else_by_its_postgresql_record(stack: LocalStack) -> None:
    import uuid

    from jarvis.context_store import claim_session, end_session_claim
    from jarvis.db import create_pool

    gym = await create_gym(stack.pg_dsn)
    pool = await create_pool(stack.pg_dsn, min_size=0, max_size=2)
    redis_up = aioredis.from_url(stack.redis_url)
    redis_down = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        first = str(uuid.uuid4())
        assert await claim_session(redis_up, pool, first, "job-a")
        assert await claim_session(redis_up, pool, first, "job-a")  # LiveKit dispatching the same job again
        # The assignment timed out on a busy worker and LiveKit dispatched anew: the member still gets JARVIS.
        assert await claim_session(redis_up, pool, first, "job-b")
        await end_session_claim(redis_up, first)
        assert not await claim_session(redis_up, pool, first, "job-c")  # a rejoin after the end

        second = str(uuid.uuid4())
        assert await claim_session(redis_down, pool, second, "job-a")  # no record yet: the first job
        await pool.execute(
            "INSERT INTO voice_sessions (id, gym_id, member_id, kiosk_id, room) VALUES ($1, $2, $3, 'k1', 'r')",
            second, gym.gym_id, gym.member_id,
        )
        assert await claim_session(redis_down, pool, second, "job-b")  # still open: dispatched again
        await pool.execute("UPDATE voice_sessions SET ended_at = now(), outcome = 'info' WHERE id = $1", second)
        assert not await claim_session(redis_down, pool, second, "job-c")
        assert not await claim_session(redis_up, pool, second, "job-c")  # Redis forgot; the record has not
    finally:
        await redis_up.aclose()
        await redis_down.aclose()
        await pool.close()


def worker_pids(pid: int) -> list[str]:
    """uvicorn's worker processes under its supervisor (multiprocessing's spawned children, not its
    resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


async def test_the_service_spreads_over_worker_processes(stack: LocalStack) -> None:
    """JARVIS_TOKEN_WORKERS=2 (docs/ops.md: what a flood needs in production): two processes serve the one
    port, each a whole service, and a gym's sessions open through them."""
    gym = await create_gym(stack.pg_dsn, rate_limit_per_minute=1000)
    log = stack.workdir / "token_service.log"
    earlier_log = log.stat().st_size if log.exists() else 0  # the module's other token services
    url = await asyncio.to_thread(stack.start_token_service, {
        "JARVIS_TOKEN_WORKERS": "2", "JARVIS_ADMISSION_CONTROL": "false",
        "JARVIS_LIVEKIT_API_SECRET": stack.livekit_api_secret,
    })
    name, supervisor = stack.processes[-1]
    try:
        assert name == "token_service"
        children: list[str] = []
        for _ in range(300):  # both workers up (one answered /healthz already), 60 s at most
            children = await asyncio.to_thread(worker_pids, supervisor.pid)
            if len(children) >= 2:
                break
            await asyncio.sleep(0.2)
        assert len(children) == 2, stack.log_tail("token_service")
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            statuses = [(await http.post("/v1/sessions", json=session_body(gym.badge_id), headers=bearer(gym.api_key)))
                        .status_code for _ in range(6)]
            missing = await http.post("/v1/sessions", json=session_body(gym.badge_id))
        assert statuses == [201] * 6
        assert (missing.status_code, missing.json()["code"]) == (401, "missing_api_key")
        # Each process froze its imports out of the garbage collector's reach (kyutai_common.runtime);
        # a worker that served none of the six may still be starting.
        def froze() -> int:
            return log.read_bytes()[earlier_log:].decode().count("startup objects out of the garbage collector")

        await poll(lambda: froze() >= 2, 30, every_s=0.2, what="both processes' freeze line")
        assert froze() == 2, stack.log_tail("token_service")
    finally:
        supervisor.terminate()
        await asyncio.to_thread(supervisor.wait, 30)
