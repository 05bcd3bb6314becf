"""Fixtures for the conversation brain: a database pool on the real stack, the member's
context as the token service would build it, the LLM stand-in, and a kiosk on the real
LiveKit server answering the `kiosk.show_video` RPC."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pytest
from livekit import api, rtc
from livekit.plugins import openai

from agent.conversation import Conversation, build_conversation
from agent.tools import Kiosk, RoomKiosk
from jarvis.context import MemberContext
from jarvis.context_store import fetch_member_by_id
from jarvis.db import create_pool
from jarvis.session_contract import room_name
from jarvis_local.llm_standin import LLMStandIn
from jarvis_local.stack import LocalStack

LYON = "11111111-1111-4111-8111-111111111111"
BORDEAUX = "22222222-2222-4222-8222-222222222222"
CAMILLE = "c1111111-0000-4000-8000-000000000001"
THOMAS = "c1111111-0000-4000-8000-000000000002"
NADIA = "c1111111-0000-4000-8000-000000000004"
LEA = "d2222222-0000-4000-8000-000000000001"


@pytest.fixture(scope="session")
async def pool(stack: LocalStack) -> AsyncIterator[Any]:
    db = await create_pool(stack.pg_dsn, min_size=1, max_size=5)
    yield db
    await db.close()


def next_weekday_at(weekday: int, hour: int) -> datetime:
    """The next such day (tomorrow at the earliest), at this local hour in France."""
    today = datetime.now(ZoneInfo("Europe/Paris")).date()
    day = today + timedelta(days=(weekday - today.weekday()) % 7 or 7)
    return datetime(day.year, day.month, day.day, hour, 0)


async def member_context(pool: Any, gym_id: str, member_id: str) -> MemberContext:
    """A fresh session for this member, built the way the agent rebuilds it from PostgreSQL."""
    session_id = str(uuid.uuid4())
    async with pool.acquire() as conn:
        record = await fetch_member_by_id(conn, gym_id, member_id)
    assert record is not None
    return record.context(session_id=session_id, kiosk_id="accueil-1", room=room_name(session_id))


@pytest.fixture
async def llm_server() -> AsyncIterator[LLMStandIn]:
    async with LLMStandIn() as server:
        yield server


def standin_llm(server: LLMStandIn) -> openai.LLM:
    """The real OpenAI-compatible client (as used for vLLM), pointed at the stand-in."""
    return openai.LLM(base_url=server.base_url, api_key="test-key", model=server.model)


@dataclass
class KioskOnLiveKit:
    """Two participants in one room of the real LiveKit server: the agent side and the kiosk."""

    agent_room: rtc.Room
    kiosk_room: rtc.Room
    videos: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kiosk(self) -> Kiosk:
        return RoomKiosk(self.agent_room, self.kiosk_room.local_participant.identity, timeout_s=3.0)


def _token(stack: LocalStack, identity: str, room: str, kind: Literal["standard", "agent"] = "standard") -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    token = api.AccessToken(stack.livekit_api_key, stack.livekit_api_secret).with_identity(identity)
    return token.with_grants(grants).with_kind(kind).to_jwt()


@pytest.fixture
async def kiosk_on_livekit(stack: LocalStack) -> AsyncIterator[KioskOnLiveKit]:
    room_name = f"jarvis-test-{uuid.uuid4().hex[:8]}"
    agent_room, kiosk_room = rtc.Room(), rtc.Room()
    pair = KioskOnLiveKit(agent_room, kiosk_room)

    async def show_video(data: rtc.RpcInvocationData) -> str:
        pair.videos.append(json.loads(data.payload))
        return json.dumps({"status": "shown"})

    await kiosk_room.connect(stack.livekit_url, _token(stack, "kiosk-accueil-1", room_name))
    kiosk_room.local_participant.register_rpc_method("kiosk.show_video", show_video)
    await agent_room.connect(stack.livekit_url, _token(stack, "agent-jarvis", room_name, kind="agent"))
    yield pair
    await agent_room.disconnect()
    await kiosk_room.disconnect()


async def started(conversation: Conversation) -> Conversation:
    """Start the session in text mode, with its log, as start_conversation does."""
    conversation.log.start()
    await conversation.session.start(conversation.agent)
    return conversation


__all__ = ["build_conversation"]
