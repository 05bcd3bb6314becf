"""A worker on a long-lived stack keeps taking kiosk sessions, one after another."""

from __future__ import annotations

import pytest
from livekit import rtc

from jarvis.session_contract import ATTR_SESSION_ID
from jarvis_local.kiosk_sim import agent_participant, open_session, poll
from jarvis_local.stack import LocalStack
from tests.conftest import LYON_KEY

VISITS = 8


@pytest.mark.xfail(
    strict=False,
    reason=(
        '2026-12-02 CI: JARVIS did not join visit 7 within 30 s once in the full suite (passed '
        'before); under investigation'
    ),
)
async def test_jarvis_joins_every_visit_of_a_busy_morning(
    stack: LocalStack, token_service_url: str, agent_worker: LocalStack
) -> None:
    for visit in range(VISITS):
        session = await open_session(token_service_url, LYON_KEY, "LYON-0002", kiosk_id=f"accueil-{visit}")
        room = rtc.Room()
        await room.connect(session["livekit_url"], session["token"])
        try:
            try:
                agent = await poll(lambda r=room: agent_participant(r), 30, what=f"JARVIS on visit {visit + 1}")
            except AssertionError:
                print(stack.log_tail("agent", 30), stack.log_tail("livekit", 30), sep="\n")
                raise
            assert agent.attributes[ATTR_SESSION_ID] == session["session_id"]
        finally:
            await room.disconnect()
