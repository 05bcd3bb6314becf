"""Fault row "Redis down" (docs/faults.md): the one Redis of the stack stops for 20 s, then comes back.

It is the Redis production shares between the token service (context cache, rate limits,
snapshots) and LiveKit (livekit.yaml's ``redis`` block: room routing and signalling across nodes).
The token service opens sessions from PostgreSQL and says so in its log; LiveKit cannot place a
new room without its Redis, so a new kiosk cannot join until Redis is back; what the member
already said is in PostgreSQL either way.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from livekit import rtc

from jarvis_local.kiosk_sim import SessionRefused, open_session, poll
from jarvis_local.stack import LocalStack
from tests.conftest import LYON_KEY
from tests.faults.conftest import Jarvis, Visit, ended, log_lines, process, rows, visit

pytestmark = pytest.mark.integration

OUTAGE_S = 20.0
# Once Redis answers again, LiveKit places rooms again after its node's next stats publish.
BACK_WITHIN_S = 30.0


async def stop_redis(stack: LocalStack) -> None:
    redis = process(stack, "redis")
    redis.terminate()
    await asyncio.to_thread(redis.wait, 10)


async def test_redis_down_sessions_still_open_from_postgres_and_nothing_said_is_lost(llms: Jarvis) -> None:
    stack = llms.stack
    member = await visit(llms)
    answered_in_outage: list[str] = []
    try:
        await stop_redis(stack)
        down_at = time.perf_counter()
        answer, _ = await member.ask("Quels sont les horaires ?")
        answered_in_outage.append(answer)

        # A badge scanned during the outage: the token service answers from PostgreSQL...
        session = await open_session(llms.token_url, LYON_KEY, "LYON-0002", kiosk_id="accueil-2")
        assert session["member_first_name"] == "Thomas"
        assert log_lines(llms.token_service_log(), "redis unavailable", "sessions open from PostgreSQL")
        assert log_lines(llms.token_service_log(), session["session_id"], "redis unavailable")
        # ...but LiveKit, whose room routing lives in the same Redis, refuses the kiosk.
        room = rtc.Room()
        with pytest.raises(rtc.ConnectError, match="500"):
            await room.connect(session["livekit_url"], session["token"])

        # The member at the first kiosk keeps talking while LiveKit holds their room.
        while time.perf_counter() - down_at < OUTAGE_S:
            try:
                answer, _ = await member.ask(f"Encore une question à {time.perf_counter() - down_at:.0f} s ?", 3)
                answered_in_outage.append(answer)
            except Exception as exc:  # the room is gone: LiveKit closed its signalling
                print(f"\nfirst kiosk cut off {time.perf_counter() - down_at:.1f} s into the outage ({exc})")
                break
            await asyncio.sleep(1.0)
    finally:
        await member.leave()
        stack.start_redis()
    back_at = time.perf_counter()

    async def jarvis_greets_again() -> Visit | None:
        try:
            return await visit(llms, "LYON-0002", greeting_timeout_s=10)
        except (SessionRefused, rtc.ConnectError, AssertionError):
            return None

    again = await poll(jarvis_greets_again, BACK_WITHIN_S, every_s=1.0, what="a new session once Redis is back")
    print(
        f"Redis down {OUTAGE_S:.0f} s: {len(answered_in_outage)} answer(s) in the outage; "
        f"a new kiosk greeted {time.perf_counter() - back_at:.1f} s after Redis came back"
    )
    try:
        answer, _ = await again.ask("Tout va bien ?")
        assert answer == "Réponse du primaire : Tout va bien ?"
    finally:
        await again.leave()

    # Nothing the member said is lost: every line said before the cut is in PostgreSQL.
    await ended(stack, member.session_id)
    logged = [(r["kind"], r["text"]) for r in await rows(stack, member.session_id)]
    said = [text for kind, text in logged if kind == "user"]
    assert said[0] == "Quels sont les horaires ?"
    assert len(said) >= len(answered_in_outage)
    assert [text for kind, text in logged[1:] if kind == "agent"][: len(answered_in_outage)] == answered_in_outage
    assert log_lines(llms.token_service_log(), "redis answers again")
