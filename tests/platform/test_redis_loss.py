"""Losing Redis loses no session record (issue 13, docs/state.md): Redis is wiped (FLUSHALL)
in the middle of a kiosk conversation, and every row of it is in PostgreSQL afterwards.

Its own stack (PostgreSQL, Redis, LiveKit): FLUSHALL also wipes what LiveKit keeps in that Redis,
which the other tests' shared stack must not suffer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from jarvis.migrate import migrate
from jarvis_local.kiosk_sim import SimulatedKiosk, open_session, poll
from jarvis_local.llm_standin import LLMStandIn, Reply, Say, last_user_text
from jarvis_local.stack import LocalStack, local_stack
from tests.conftest import CAMILLE, LYON_KEY

AGENT = "jarvis-redis-loss"


def answer(request: dict[str, Any]) -> Reply:
    return Say(f"Bien reçu : {last_user_text(request)}")


@pytest.fixture(scope="module")
def own_stack() -> Iterator[LocalStack]:
    with local_stack() as s:
        asyncio.run(migrate(s.pg_dsn, seed_demo=True))
        yield s


@pytest.fixture(scope="module")
async def token_url(own_stack: LocalStack) -> AsyncIterator[str]:
    async with LLMStandIn(answer) as llm:
        env = {"JARVIS_SPEECH__MODE": "text", "JARVIS_SESSION_LOG__SPOOL_DIR": str(own_stack.workdir / "outbox"),
               **llm.worker_env}
        yield await asyncio.to_thread(own_stack.start_jarvis, AGENT, env, "agent-redis-loss")


async def ask(kiosk: SimulatedKiosk, text: str) -> str:
    before = len(kiosk.transcripts)
    await kiosk.send_chat(text)
    await poll(lambda: len(kiosk.transcripts) > before, 30, what=f"JARVIS's answer to {text!r}")
    return kiosk.transcripts[before][1]


async def test_redis_wiped_mid_conversation_loses_no_session_record(own_stack: LocalStack, token_url: str) -> None:
    session = await open_session(token_url, LYON_KEY, CAMILLE["badge_id"])
    kiosk = SimulatedKiosk()
    await kiosk.join(session["livekit_url"], session["token"])
    try:
        await poll(lambda: kiosk.transcripts, 60, what="JARVIS's greeting")
        assert "horaires" in await ask(kiosk, "Quels sont les horaires ?")
        redis = aioredis.from_url(own_stack.redis_url)
        try:
            await redis.flushall()
            assert await redis.dbsize() == 0
        finally:
            await redis.aclose()
        # The conversation goes on: nothing the session needs lives only in Redis.
        assert "coach" in await ask(kiosk, "Je voudrais voir un coach.")
    finally:
        await kiosk.leave()

    async def ended() -> asyncpg.Record | None:
        conn = await asyncpg.connect(own_stack.pg_dsn)
        try:
            row = await conn.fetchrow("SELECT * FROM voice_sessions WHERE id = $1", session["session_id"])
            return row if row is not None and row["ended_at"] is not None else None
        finally:
            await conn.close()

    row = await poll(ended, 30, every_s=0.25, what="the session's end in voice_sessions")
    assert str(row["member_id"]) == CAMILLE["member_id"] and row["kiosk_id"] == "accueil-1"
    conn = await asyncpg.connect(own_stack.pg_dsn)
    try:
        lines = await conn.fetch(
            "SELECT kind, text FROM jarvis_interactions WHERE session_id = $1 ORDER BY id", session["session_id"]
        )
    finally:
        await conn.close()
    said = [(r["kind"], r["text"]) for r in lines]
    print(f"\nafter FLUSHALL: voice_sessions ended ({row['outcome']}), {len(said)} interaction rows")
    for question in ("Quels sont les horaires ?", "Je voudrais voir un coach."):
        assert ("user", question) in said, said
        assert ("agent", f"Bien reçu : {question}") in said, said
