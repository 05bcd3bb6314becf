"""Helpers for tests that play the kiosk: ask the token service, join the room as the kiosk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from livekit import api, rtc

from jarvis.stack import LocalStack

T = TypeVar("T")


async def open_session(token_service_url: str, gym_key: str, badge_id: str, kiosk_id: str = "accueil-1") -> Any:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{token_service_url}/v1/sessions",
            json={"badge_id": badge_id, "kiosk_id": kiosk_id},
            headers={"Authorization": f"Bearer {gym_key}"},
        )
    assert r.status_code == 201, r.text
    return r.json()


async def eventually(probe: Callable[[], T | None], timeout_s: float = 30, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def agent_participant(room: rtc.Room, attribute: str = "jarvis.ready") -> rtc.RemoteParticipant | None:
    for p in room.remote_participants.values():
        if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT and p.attributes.get(attribute):
            return p
    return None


async def room_names(stack: LocalStack) -> set[str]:
    lk = api.LiveKitAPI(stack.livekit_url.replace("ws://", "http://"), stack.livekit_api_key, stack.livekit_api_secret)
    try:
        rooms = await lk.room.list_rooms(api.ListRoomsRequest())
        return {r.name for r in rooms.rooms}
    finally:
        await lk.aclose()
