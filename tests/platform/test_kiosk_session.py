"""Gym backend asks for a session → kiosk joins → JARVIS is dispatched with the member's context
→ kiosk leaves → the room closes. All on the real LiveKit server, Redis and PostgreSQL."""

from __future__ import annotations

import time

from livekit import rtc

from jarvis.session_contract import ATTR_GYM_ID, ATTR_MEMBER_ID, ATTR_SESSION_ID, room_name
from jarvis_local.kiosk_sim import agent_participant, open_session, poll, room_names
from jarvis_local.stack import LocalStack
from tests.conftest import CAMILLE, LYON_GYM_ID, LYON_KEY


async def test_member_badges_in_and_jarvis_joins_with_their_context(
    stack: LocalStack, token_service_url: str, agent_worker: LocalStack
) -> None:
    started = time.perf_counter()
    session = await open_session(token_service_url, LYON_KEY, CAMILLE["badge_id"])
    assert session["room"] == room_name(session["session_id"])
    assert "Camille" not in session["room"]

    room = rtc.Room()
    await room.connect(session["livekit_url"], session["token"])
    assert room.local_participant.identity == "kiosk-accueil-1"
    agent = await poll(lambda: agent_participant(room), 60, what="the agent to join and be ready")
    print(f"\nagent ready {1000 * (time.perf_counter() - started):.0f} ms after the session request")

    assert agent.attributes[ATTR_SESSION_ID] == session["session_id"]
    assert agent.attributes[ATTR_MEMBER_ID] == CAMILLE["member_id"]
    assert agent.attributes[ATTR_GYM_ID] == LYON_GYM_ID
    assert session["room"] in await room_names(stack)

    await room.disconnect()
    async def room_gone() -> bool:
        return session["room"] not in await room_names(stack)

    await poll(room_gone, 30, every_s=0.2, what="the room to close after the kiosk left")
