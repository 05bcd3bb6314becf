"""A worker on a long-lived stack keeps taking kiosk sessions, one after another."""

from __future__ import annotations

import asyncio
from typing import Any

from livekit import rtc

from jarvis.session_contract import ATTR_SESSION_ID
from jarvis_local.kiosk_sim import agent_participant, open_session, poll
from jarvis_local.stack import LocalStack
from tests.conftest import LYON_KEY

VISITS = 8


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


RUSH_KIOSKS = 4
# Badge scans a breath apart: each kiosk's job is asked for while the one before is still starting.
RUSH_GAP_S = 0.15


async def test_kiosks_that_scan_badges_a_moment_apart_all_get_jarvis(stack: LocalStack) -> None:
    # Its own idle worker, so no other test's session changes what it counts. No warm job process:
    # each job waits for one to start, the widest window (a burst that used up the warm ones opens
    # the same). livekit-agents counted the first starting job as the whole threshold: the worker
    # reported itself full, refused the next kiosks' jobs, and LiveKit never offered them again.
    worker_env = {"JARVIS_SPEECH__MODE": "text", "JARVIS_NUM_IDLE_PROCESSES": "0"}
    token_url = await asyncio.to_thread(stack.start_jarvis, "jarvis-rush", worker_env, "agent-rush")

    async def kiosk_joins(number: int) -> tuple[rtc.Room, dict[str, Any]]:
        await asyncio.sleep(number * RUSH_GAP_S)
        session = await open_session(token_url, LYON_KEY, "LYON-0002", kiosk_id=f"rush-{number}")
        room = rtc.Room()
        await room.connect(session["livekit_url"], session["token"])
        return room, session

    kiosks = await asyncio.gather(*(kiosk_joins(number) for number in range(RUSH_KIOSKS)))
    try:

        async def greeted(room: rtc.Room, session: dict[str, Any]) -> None:
            agent = await poll(lambda: agent_participant(room), 60, what=f"JARVIS at kiosk {session['room']}")
            assert agent.attributes[ATTR_SESSION_ID] == session["session_id"]

        try:
            await asyncio.gather(*(greeted(room, session) for room, session in kiosks))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stack.log_tail('agent-rush', 40)}") from None
    finally:
        await asyncio.gather(*(room.disconnect() for room, _session in kiosks))
