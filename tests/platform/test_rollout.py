"""Rollout gym by gym with an instant way back (issue 13): the flags in PostgreSQL decide, on every
token-service instance within 1 s, which kiosks get JARVIS and which keep the current provider.

Admission control is off on these token services: the bursts here open hundreds of sessions no
kiosk joins, which admission would rightly count as on their way (tests/platform/test_admission.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from jarvis_local.kiosk_sim import SimulatedKiosk, open_session, poll
from jarvis_local.llm_standin import LLMStandIn, Reply, Say, last_user_text
from jarvis_local.stack import LocalStack
from tests.platform.gym_factory import TestGym, create_gym
from tests.platform.test_token_service import settings_for
from token_service.app import create_app
from token_service.rollout import Flag, Snapshot, jarvis_enabled

AGENT = "jarvis-rollout"
ADMIN_KEY = "admin-key-for-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# What the flag test promises: a flip reaches every instance within this.
FLIP_BOUND_S = 1.0


def answer(request: dict[str, Any]) -> Reply:
    return Say(f"Bien reçu : {last_user_text(request)}")


@pytest.fixture(scope="module")
async def instances(stack: LocalStack) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """Two token-service instances on one database: a process, and one in this test process."""
    url = await asyncio.to_thread(
        stack.start_token_service,
        {"JARVIS_AGENT_NAME": AGENT, "JARVIS_ADMISSION_CONTROL": "false", "JARVIS_ADMIN_API_KEY": ADMIN_KEY},
    )
    app = create_app(settings_for(stack, agent_name=AGENT, admission_control=False, admin_api_key=ADMIN_KEY))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://token-b", timeout=30)
    yield url, client
    await client.aclose()
    await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def kill_switch_restored(stack: LocalStack) -> AsyncIterator[None]:
    """The kill switch is global: whatever a test does, it is off again afterwards."""
    yield
    await sql(stack, "UPDATE jarvis_rollout_global SET kill_switch = false")


async def sql(stack: LocalStack, statement: str, *args: object) -> Any:
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        return await conn.execute(statement, *args)
    finally:
        await conn.close()


async def add_members(stack: LocalStack, gym: TestGym, count: int) -> list[tuple[str, str]]:
    """``count`` more members of the gym: (badge, member id)."""
    members = [(f"R-{uuid.uuid4().hex[:12]}", str(uuid.uuid4())) for _ in range(count)]
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        await conn.copy_records_to_table(
            "gym_members", records=[(m, gym.gym_id, b, "Membre") for b, m in members],
            columns=["id", "gym_id", "badge_id", "first_name"],
        )
    finally:
        await conn.close()
    return members


@dataclass
class Answer:
    sent: float  # perf_counter when the request left
    answered: float  # perf_counter when its answer came back
    status: int
    code: str | None


async def ask(http: httpx.AsyncClient, base: str, gym: TestGym, badge: str, kiosk: str = "accueil-1") -> Answer:
    sent = time.perf_counter()
    r = await http.post(f"{base}/v1/sessions", json={"badge_id": badge, "kiosk_id": kiosk},
                        headers={"Authorization": f"Bearer {gym.api_key}"})
    return Answer(sent, time.perf_counter(), r.status_code, None if r.status_code == 201 else r.json().get("code"))


def test_percent_rollout_is_sticky_per_member_and_only_grows() -> None:
    members = [str(uuid.UUID(int=n)) for n in range(1000)]
    gym = str(uuid.uuid4())
    ten = Snapshot(flags={(gym, ""): Flag("percent", 10)})
    fifty = Snapshot(flags={(gym, ""): Flag("percent", 50)})
    at_ten = {m for m in members if jarvis_enabled(ten, gym, "k", m)}
    assert at_ten == {m for m in members if jarvis_enabled(ten, gym, "k", m)}  # same answer every time
    assert at_ten <= {m for m in members if jarvis_enabled(fifty, gym, "k", m)}  # 10 -> 50 only adds members
    assert jarvis_enabled(ten, gym, "k", None) is None  # it depends on the member
    assert jarvis_enabled(Snapshot(kill_switch=True), gym, "k", members[0]) is False


async def test_ten_percent_of_a_thousand_members_get_jarvis_the_same_ones_every_time(
    stack: LocalStack, instances: tuple[str, httpx.AsyncClient]
) -> None:
    url, _ = instances
    gym = await create_gym(stack.pg_dsn, rate_limit_per_minute=100_000)
    members = await add_members(stack, gym, 1000)
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.put(f"{url}/v1/admin/rollout/gyms/{gym.gym_id}", json={"mode": "percent", "percent": 10},
                           headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["gyms"][gym.gym_id] == {"mode": "percent", "percent": 10}
        gate = asyncio.Semaphore(8)

        async def badge_in(badge: str) -> Answer:
            async with gate:
                return await ask(http, url, gym, badge)

        first = await asyncio.gather(*(badge_in(b) for b, _ in members))
        again = await asyncio.gather(*(badge_in(b) for b, _ in members[:150]))
    assert {(a.status, a.code) for a in first} == {(201, None), (403, "jarvis_disabled")}
    share = 100 * sum(a.status == 201 for a in first) / len(first)
    print(f"\n10% rollout: {share:.1f}% of {len(first)} members got JARVIS")
    assert 7.0 <= share <= 13.0
    assert [a.status for a in again] == [a.status for a in first[:150]], "a member changed sides"


async def test_kill_switch_during_a_burst_sends_every_new_session_back_within_a_second(
    stack: LocalStack, instances: tuple[str, httpx.AsyncClient], kill_switch_restored: None
) -> None:
    url, in_process = instances
    gym = await create_gym(stack.pg_dsn, rate_limit_per_minute=100_000)
    answers: list[Answer] = []
    stop = asyncio.Event()

    async def burst(http: httpx.AsyncClient, base: str) -> None:
        while not stop.is_set():
            answers.append(await ask(http, base, gym, gym.badge_id))
            # Once the kill switch is cached, the in-process instance answers without any real I/O:
            # its loops never gave the event loop back, the process instance's connections sat
            # idle past uvicorn's 5 s keep-alive and one request met a closed connection.
            await asyncio.sleep(0)

    async with httpx.AsyncClient(timeout=30) as http:
        loops = [asyncio.create_task(burst(http, url)) for _ in range(2)]
        loops += [asyncio.create_task(burst(in_process, "")) for _ in range(2)]
        await asyncio.sleep(1.0)
        flipping = time.perf_counter()
        await sql(stack, "UPDATE jarvis_rollout_global SET kill_switch = true")
        flipped = time.perf_counter()
        await asyncio.sleep(FLIP_BOUND_S + 1.5)
        stop.set()
        await asyncio.gather(*loops)

    # Answered before the UPDATE began: a request still in flight while it commits may see either state.
    before = [a for a in answers if a.answered < flipping]
    after_bound = [a for a in answers if a.sent >= flipped + FLIP_BOUND_S]
    last_jarvis = max((a.sent - flipped for a in answers if a.status == 201), default=0.0)
    print(f"\nkill switch: {len(answers)} requests on 2 instances, {len(before)} before the flip;"
          f" last JARVIS session sent {1000 * last_jarvis:.0f} ms after it; {len(after_bound)} sent"
          f" over {FLIP_BOUND_S:.0f} s after it, all jarvis_disabled:"
          f" {all(a.code == 'jarvis_disabled' for a in after_bound)}")
    assert before
    assert {(a.status, a.code) for a in before} == {(201, None)}
    assert len(after_bound) >= 10
    assert {(a.status, a.code) for a in after_bound} == {(403, "jarvis_disabled")}


async def test_a_live_session_finishes_normally_after_the_kill_switch(
    stack: LocalStack, instances: tuple[str, httpx.AsyncClient], kill_switch_restored: None
) -> None:
    url, _ = instances
    gym = await create_gym(stack.pg_dsn)
    async with LLMStandIn(answer) as llm:
        await asyncio.to_thread(
            stack.start_agent_worker,
            {"JARVIS_AGENT_NAME": AGENT, "JARVIS_SPEECH__MODE": "text", "JARVIS_NUM_IDLE_PROCESSES": "1",
             **llm.worker_env},
            "agent-rollout",
        )
        session = await open_session(url, gym.api_key, gym.badge_id)
        kiosk = SimulatedKiosk()
        await kiosk.join(session["livekit_url"], session["token"])
        try:
            await poll(lambda: kiosk.transcripts, 60, what="JARVIS's greeting")
            await sql(stack, "UPDATE jarvis_rollout_global SET kill_switch = true")
            async with httpx.AsyncClient(timeout=30) as http:
                await asyncio.sleep(FLIP_BOUND_S)
                refused = await ask(http, url, gym, gym.badge_id, kiosk="accueil-2")
            assert (refused.status, refused.code) == (403, "jarvis_disabled")
            # The member already talking to JARVIS goes on: the flag decides new sessions only.
            before = len(kiosk.transcripts)
            await kiosk.send_chat("Quels sont les horaires ?")
            await poll(lambda: len(kiosk.transcripts) > before, 30, what="JARVIS's answer after the flip")
            assert "horaires" in kiosk.transcripts[before][1]
        finally:
            await kiosk.leave()

    async def ended() -> asyncpg.Record | None:
        conn = await asyncpg.connect(stack.pg_dsn)
        try:
            row = await conn.fetchrow("SELECT ended_at FROM voice_sessions WHERE id = $1", session["session_id"])
            return row if row is not None and row["ended_at"] is not None else None
        finally:
            await conn.close()

    await poll(ended, 30, every_s=0.25, what="the live session's end in voice_sessions")


async def test_admin_routes_pilot_one_kiosk_and_need_the_admin_key(
    stack: LocalStack, instances: tuple[str, httpx.AsyncClient], kill_switch_restored: None
) -> None:
    url, in_process = instances
    gym = await create_gym(stack.pg_dsn, rate_limit_per_minute=1000)
    base = f"{url}/v1/admin/rollout"
    async with httpx.AsyncClient(timeout=30) as http:
        wrong = await http.put(f"{base}/kill-switch", json={"on": True}, headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()["code"]) == (401, "invalid_admin_key")
        assert (await http.put(f"{base}/gyms/{gym.gym_id}", json={"mode": "off"}, headers=ADMIN)).status_code == 200
        r = await http.put(f"{base}/gyms/{gym.gym_id}/kiosks/pilote", json={"mode": "on"}, headers=ADMIN)
        assert r.json()["kiosks"][gym.gym_id] == {"pilote": {"mode": "on", "percent": 0}}
        unknown = await http.put(f"{base}/gyms/{uuid.uuid4()}", json={"mode": "on"}, headers=ADMIN)
        assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_gym")
        # The other instance was told nothing: it reads the flags again within its refresh.
        await asyncio.sleep(FLIP_BOUND_S)
        for client, where in ((http, url), (in_process, "")):
            assert (await ask(client, where, gym, gym.badge_id, kiosk="pilote")).status == 201
            assert (await ask(client, where, gym, gym.badge_id, kiosk="accueil-1")).code == "jarvis_disabled"
        assert (await http.put(f"{base}/kill-switch", json={"on": True}, headers=ADMIN)).json()["kill_switch"]
        await asyncio.sleep(FLIP_BOUND_S)
        assert (await ask(in_process, "", gym, gym.badge_id, kiosk="pilote")).code == "jarvis_disabled"
        assert not (await http.put(f"{base}/kill-switch", json={"on": False}, headers=ADMIN)).json()["kill_switch"]


async def test_a_database_outage_keeps_the_last_flags_with_one_log_line(
    stack: LocalStack, instances: tuple[str, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    """A gym's kiosks are sent to the current provider → PostgreSQL stops → its badge scans still
    get jarvis_disabled, from the flags read last → one warning for the whole outage (the flags are
    read in the background, never on a request's path) → the database is back → read again."""
    url, in_process = instances
    caplog.set_level(logging.INFO, logger="token_service.rollout")
    gym = await create_gym(stack.pg_dsn, rate_limit_per_minute=1000)
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.put(f"{url}/v1/admin/rollout/gyms/{gym.gym_id}", json={"mode": "off"}, headers=ADMIN)
        assert r.status_code == 200, r.text
    await poll(lambda: _disabled(in_process, gym), FLIP_BOUND_S * 3, what="the gym's flag read by the instance")

    def rollout_lines(text: str) -> list[str]:
        return [rec.getMessage() for rec in caplog.records if text in rec.getMessage()]

    await asyncio.to_thread(stack.stop_postgres)
    try:
        answers = []
        for _ in range(8):  # 2 s: four refresh periods of the flags
            answers.append(await ask(in_process, "", gym, gym.badge_id))
            await asyncio.sleep(0.25)
        assert {(a.status, a.code) for a in answers} == {(403, "jarvis_disabled")}
        assert len(rollout_lines("rollout flags not read")) == 1, rollout_lines("rollout flags")
    finally:
        await asyncio.to_thread(stack.start_postgres)
    await poll(lambda: bool(rollout_lines("rollout flags read again")), 30, what="the flags read after the outage")


async def _disabled(client: httpx.AsyncClient, gym: TestGym) -> bool:
    return (await ask(client, "", gym, gym.badge_id)).code == "jarvis_disabled"


async def test_every_error_has_a_code_and_openapi_declares_the_bearer_scheme(
    instances: tuple[str, httpx.AsyncClient],
) -> None:
    _, client = instances
    for r in (await client.get("/nowhere"), await client.get("/v1/sessions"), await client.post("/v1/sessions")):
        assert r.status_code >= 400 and isinstance(r.json().get("code"), str) and r.json()["code"], r.text
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["GymApiKey"] == {
        "type": "http", "scheme": "bearer", "description": "The gym's API key",
    }
    assert {"GymApiKey": []} in spec["paths"]["/v1/sessions"]["post"]["security"]
    assert "code" in spec["components"]["schemas"]["ErrorBody"]["required"]
