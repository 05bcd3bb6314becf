"""Conversations driven with LiveKit's own testing helpers (`AgentSession.run`,
`RunResult.expect`): the real OpenAI-compatible client talks to the LLM stand-in over HTTP,
the gym tools write to the real PostgreSQL, and the kiosk answers over the real LiveKit RPC."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.conversation import build_conversation
from tests.brain.conftest import (
    CAMILLE,
    LYON,
    THOMAS,
    KioskOnLiveKit,
    member_context,
    standin_llm,
    started,
)
from tests.llm_standin import CallTool, EchoToolResult, LLMStandIn, Say

pytestmark = pytest.mark.integration


async def rows(pool: Any, sql: str, *args: Any) -> list[Any]:
    async with pool.acquire() as conn:
        return list(await conn.fetch(sql, *args))


async def test_member_asks_how_to_squat_and_the_kiosk_shows_the_video(
    pool: Any, llm_server: LLMStandIn, kiosk_on_livekit: KioskOnLiveKit
) -> None:
    context = await member_context(pool, LYON, CAMILLE)
    llm_server.script([CallTool("display_video_tutorial", {"exercise": "squat"}), EchoToolResult("Regarde l'écran : ")])
    conversation = await started(
        build_conversation(context, pool=pool, llm=standin_llm(llm_server), kiosk=kiosk_on_livekit.kiosk)
    )
    async with conversation.session:
        result = await conversation.session.run(user_input="Comment on fait un squat ?")

        result.expect.next_event().is_function_call(name="display_video_tutorial", arguments={"exercise": "squat"})
        output = result.expect.next_event().is_function_call_output().event().item
        assert not output.is_error and "Le squat" in output.output
        answer = result.expect.next_event().is_message(role="assistant").event().item
        assert "affichée" in (answer.text_content or "")
        result.expect.no_more_events()

    assert kiosk_on_livekit.videos == [
        {"url": "https://videos.example.com/energie-lyon-part-dieu/squat.mp4", "title": "Le squat"}
    ]
    # The LLM saw the member's prompt and our tools, with no id among their parameters.
    first_request = llm_server.requests[0]
    assert "Camille" in first_request["messages"][0]["content"]
    tool_names = {t["function"]["name"] for t in first_request["tools"]}
    assert "display_video_tutorial" in tool_names
    for tool in first_request["tools"]:
        assert not {"gym_id", "member_id", "session_id"} & set(tool["function"]["parameters"]["properties"])

    await conversation.log.finish()
    logged = await rows(
        pool, "SELECT kind, text, tool_name, tool_args, tool_result, latency_ms FROM jarvis_interactions"
        " WHERE session_id = $1 ORDER BY id", context.session_id,
    )  # fmt: skip
    assert [r["kind"] for r in logged] == ["user", "tool", "agent"]
    tool_row = logged[1]
    assert tool_row["tool_name"] == "display_video_tutorial"
    assert json.loads(tool_row["tool_args"]) == {"exercise": "squat"}
    assert json.loads(tool_row["tool_result"])["is_error"] is False
    assert tool_row["latency_ms"] is not None and tool_row["latency_ms"] >= 0
    session_row = (await rows(pool, "SELECT * FROM voice_sessions WHERE id = $1", context.session_id))[0]
    assert session_row["outcome"] == "completed" and session_row["summary"].startswith("Vidéo")
