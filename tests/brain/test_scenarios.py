"""Conversations driven with LiveKit's own testing helpers (`AgentSession.run`,
`RunResult.expect`): the real OpenAI-compatible client talks to the LLM stand-in over HTTP,
the gym tools write to the real PostgreSQL, and the kiosk answers over the real LiveKit RPC."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from livekit.agents.voice.run_result import RunResult

from agent.conversation import build_conversation
from jarvis_local.llm_standin import CallTool, EchoToolResult, LLMStandIn, Say
from jarvis_local.stack import free_port
from tests.brain.conftest import (
    CAMILLE,
    LYON,
    THOMAS,
    KioskOnLiveKit,
    member_context,
    next_weekday_at,
    standin_llm,
    started,
)

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
        result: RunResult[None] = await conversation.session.run(user_input="Comment on fait un squat ?")

        result.expect.next_event().is_function_call(name="display_video_tutorial", arguments={"exercise": "squat"})
        output = result.expect.next_event().is_function_call_output().event().item
        assert not output.is_error and "Le squat" in output.output
        answer = result.expect.next_event().is_message(role="assistant").event().item
        assert "affichée" in (answer.text_content or "")
        result.expect.no_more_events()

    assert kiosk_on_livekit.videos == [
        {"url": "/videos/energie-lyon-part-dieu/squat.mp4", "title": "Le squat"}
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


async def converse(
    pool: Any, llm_server: LLMStandIn, context: Any, user_input: str, replies: list[Any], **kwargs: Any
) -> tuple[Any, Any]:
    """One member turn through the whole session; returns (RunResult, Conversation)."""
    llm_server.script(replies)
    conversation = await started(build_conversation(context, pool=pool, llm=standin_llm(llm_server), **kwargs))
    async with conversation.session:
        result: RunResult[None] = await conversation.session.run(user_input=user_input)
    await conversation.log.finish()
    return result, conversation


async def test_booking_a_coaching_session_with_the_preferred_coach(pool: Any, llm_server: LLMStandIn) -> None:
    context = await member_context(pool, LYON, CAMILLE)
    thursday_10 = next_weekday_at(3, 10)
    result, _ = await converse(
        pool, llm_server, context, "Je voudrais une séance avec Karim jeudi à dix heures",
        [CallTool("book_session", {"datetime": thursday_10.isoformat(timespec="minutes")}), EchoToolResult()],
    )  # fmt: skip

    result.expect.next_event().is_function_call(name="book_session")
    assert not result.expect.next_event().is_function_call_output().event().item.is_error
    answer = result.expect.next_event().is_message(role="assistant").event().item.text_content or ""
    assert answer.startswith("C'est réservé : séance avec Karim le jeudi") and "dix heures" in answer

    booked = await rows(
        pool, "SELECT b.gym_id::text, b.member_id::text, s.first_name, b.starts_at, b.session_id::text"
        " FROM bookings b JOIN gym_staff s ON s.id = b.coach_id WHERE b.session_id = $1", context.session_id,
    )  # fmt: skip
    assert len(booked) == 1
    assert (booked[0]["gym_id"], booked[0]["member_id"], booked[0]["first_name"]) == (LYON, CAMILLE, "Karim")
    assert booked[0]["starts_at"] == thursday_10.replace(tzinfo=ZoneInfo("Europe/Paris"))


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        (lambda: datetime.now(ZoneInfo("Europe/Paris")) - timedelta(days=1), "déjà passé"),
        (lambda: next_weekday_at(6, 15), "La salle est fermée"),  # Sunday: open 9 h to 13 h only
        (lambda: next_weekday_at(2, 10), "Karim n'est pas disponible"),  # Wednesday: Karim from 14 h
    ],
    ids=["past-date", "gym-closed", "coach-off"],
)
async def test_booking_is_refused_with_a_reason_and_nothing_is_written(
    pool: Any, llm_server: LLMStandIn, when: Any, reason: str
) -> None:
    context = await member_context(pool, LYON, CAMILLE)
    moment = when().replace(tzinfo=None, minute=0, second=0, microsecond=0)
    result, _ = await converse(
        pool, llm_server, context, "Réserve-moi une séance",
        [CallTool("book_session", {"datetime": moment.isoformat(timespec="minutes")}), EchoToolResult()],
    )  # fmt: skip

    result.expect.next_event().is_function_call(name="book_session")
    output = result.expect.next_event().is_function_call_output().event().item
    assert output.is_error and reason in output.output
    answer = result.expect.next_event().is_message(role="assistant").event().item.text_content or ""
    assert reason in answer and "Rien n'est réservé" in answer
    assert await rows(pool, "SELECT 1 FROM bookings WHERE session_id = $1", context.session_id) == []


async def test_frustrated_member_is_flagged_for_the_manager(pool: Any, llm_server: LLMStandIn) -> None:
    context = await member_context(pool, LYON, THOMAS)
    reason = "Racks à squat toujours pris le soir, parle de résilier"
    result, _ = await converse(
        pool, llm_server, context, "J'en ai marre, les racks sont toujours pris, je vais résilier.",
        [CallTool("log_churn_risk", {"reason": reason, "severity": "critical"}),
         Say("Je comprends, c'est frustrant. Je préviens l'équipe pour trouver une solution avec toi.")],
    )  # fmt: skip

    result.expect.next_event().is_function_call(name="log_churn_risk")
    # The model is told to keep the flag from the member.
    assert "Ne le mentionne pas" in result.expect.next_event().is_function_call_output().event().item.output
    result.expect.next_event().is_message(role="assistant")

    flags = await rows(
        pool, "SELECT gym_id::text, member_id::text, reason, severity FROM churn_flags WHERE session_id = $1",
        context.session_id,
    )  # fmt: skip
    assert [tuple(f) for f in flags] == [(LYON, THOMAS, reason, "critical")]
    session_row = (await rows(pool, "SELECT sentiment, summary FROM voice_sessions WHERE id = $1", context.session_id))[
        0
    ]
    assert session_row["sentiment"] == "negative" and "risque de départ" in session_row["summary"].lower()


async def test_a_flag_raised_before_the_session_log_wrote_its_row_still_points_at_the_session(pool: Any) -> None:
    from agent.session_log import SessionLog
    from agent.tools import GymTools, SessionIds

    context = await member_context(pool, LYON, THOMAS)
    log = SessionLog(pool, context)  # never started: its voice_sessions row is not written yet
    tools = GymTools(
        pool, SessionIds(gym_id=LYON, member_id=THOMAS, session_id=context.session_id),
        ensure_session=log.ensure_session_row,
    )  # fmt: skip
    await tools.call("log_churn_risk", {"reason": "Parle de résilier", "severity": "high"}, call_id="call-1")

    flags = await rows(pool, "SELECT session_id::text FROM churn_flags WHERE member_id = $1 AND reason = $2",
                       THOMAS, "Parle de résilier")  # fmt: skip
    assert [f["session_id"] for f in flags] == [context.session_id]
    session = await rows(pool, "SELECT kiosk_id, room FROM voice_sessions WHERE id = $1", context.session_id)
    assert [tuple(r) for r in session] == [(context.kiosk_id, context.room)]


async def test_member_in_pain_gets_their_coach_contacted(pool: Any, llm_server: LLMStandIn) -> None:
    context = await member_context(pool, LYON, CAMILLE)
    notified: list[Any] = []

    async def notify(notification: Any) -> None:
        notified.append(notification)

    result, _ = await converse(
        pool, llm_server, context, "J'ai mal au genou depuis ma course",
        [CallTool("contact_coach", {"message": "Douleur au genou après la course", "urgency": "high"}),
         EchoToolResult()],
        notify_coach=notify,
    )  # fmt: skip

    result.expect.next_event().is_function_call(name="contact_coach")
    result.expect.next_event().is_function_call_output()
    answer = result.expect.next_event().is_message(role="assistant").event().item.text_content or ""
    assert answer == "C'est transmis à Karim, qui reviendra vers toi dans les dix minutes."

    requests = await rows(
        pool, "SELECT r.id::text, r.gym_id::text, s.first_name, r.message, r.urgency FROM coach_requests r"
        " JOIN gym_staff s ON s.id = r.coach_id WHERE r.session_id = $1", context.session_id,
    )  # fmt: skip
    assert [tuple(r)[1:] for r in requests] == [(LYON, "Karim", "Douleur au genou après la course", "high")]
    assert [n.request_id for n in notified] == [requests[0]["id"]]
    assert notified[0].gym_id == LYON and notified[0].urgency == "high"


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("book_session", {"datetime": "demain vers 25h"}),
        ("book_session", {"datetime": "2026-13-45T10:00", "member_id": CAMILLE}),
        ("log_churn_risk", {"reason": "ras le bol", "severity": "apocalyptique"}),
        ("create_mission", "pas du JSON du tout"),
    ],
    ids=["unreadable-date", "invalid-date-and-forged-id", "unknown-severity", "not-json"],
)
async def test_tool_with_bad_arguments_gets_a_polite_answer_and_writes_nothing(
    pool: Any, llm_server: LLMStandIn, tool: str, arguments: Any
) -> None:
    context = await member_context(pool, LYON, CAMILLE)
    result, _ = await converse(
        pool, llm_server, context, "Tu peux t'en occuper ?",
        [CallTool(tool, arguments), Say("Pardon, je n'ai pas bien compris : tu peux me redire le jour et l'heure ?")],
    )  # fmt: skip

    # Unparseable JSON never becomes a call event: LiveKit answers it at once.
    result.expect.skip_next_event_if(type="function_call", name=tool)
    output = result.expect.next_event().is_function_call_output().event().item
    assert output.is_error and output.name == tool
    result.expect.next_event().is_message(role="assistant")
    # The model was told what went wrong, and nothing was written anywhere.
    told = llm_server.requests[-1]["messages"][-1]
    assert told["role"] == "tool" and told["content"] == output.output
    if isinstance(arguments, dict):  # our own validation speaks French and says nothing was done
        assert "rien n'a été fait" in output.output or "rien n'est réservé" in output.output
    for table in ("bookings", "churn_flags", "missions", "coach_requests"):
        assert await rows(pool, f"SELECT 1 FROM {table} WHERE session_id = $1", context.session_id) == []


async def test_database_down_the_agent_says_it_cannot_book_and_carries_on(
    pool: Any, llm_server: LLMStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JARVIS_SESSION_LOG__DRAIN_TIMEOUT_S", "1")
    context = await member_context(pool, LYON, CAMILLE)
    dead_pool = await asyncpg.create_pool(f"postgresql://jarvis@127.0.0.1:{free_port()}/jarvis", min_size=0)
    llm_server.script(
        [CallTool("book_session", {"datetime": next_weekday_at(3, 10).isoformat(timespec="minutes")}),
         EchoToolResult(), Say("Avec plaisir, à bientôt !")]
    )  # fmt: skip
    conversation = await started(build_conversation(context, pool=dead_pool, llm=standin_llm(llm_server)))
    async with conversation.session:
        result: RunResult[None] = await conversation.session.run(user_input="Réserve-moi une séance jeudi à dix heures")
        result.expect.next_event().is_function_call(name="book_session")
        result.expect.next_event().is_function_call_output()
        answer = result.expect.next_event().is_message(role="assistant").event().item.text_content or ""
        assert answer.startswith("Je ne peux pas réserver pour le moment")
        # The conversation goes on.
        second: RunResult[None] = await conversation.session.run(user_input="Merci quand même")
        second.expect.next_event().is_message(role="assistant")
    await conversation.log.finish()
    # Nothing is dropped: the rows wait in the outbox for the worker's sweeper (none runs here).
    assert conversation.log.pending_rows > 0 and conversation.log.lost_rows == 0
    assert conversation.log.spool_path is not None
    conversation.log.spool_path.unlink()
    await dead_pool.close()


async def test_each_turn_is_in_the_database_while_the_session_is_still_open(pool: Any, llm_server: LLMStandIn) -> None:
    """A crash mid-session loses nothing already said: rows are written as turns happen."""
    context = await member_context(pool, LYON, CAMILLE)
    llm_server.script([CallTool("get_gym_info", {"topic": "horaires"}), EchoToolResult()])
    conversation = await started(build_conversation(context, pool=pool, llm=standin_llm(llm_server)))
    async with conversation.session:
        await conversation.session.run(user_input="Vous fermez à quelle heure le dimanche ?")
        sql = "SELECT kind, tool_name FROM jarvis_interactions WHERE session_id = $1 ORDER BY id"
        for _ in range(100):
            logged = [(r["kind"], r["tool_name"]) for r in await rows(pool, sql, context.session_id)]
            if len(logged) == 3:
                break
            await asyncio.sleep(0.05)
        assert logged == [("user", None), ("tool", "get_gym_info"), ("agent", None)]
        open_session = await rows(pool, "SELECT ended_at FROM voice_sessions WHERE id = $1", context.session_id)
        assert open_session[0]["ended_at"] is None
    await conversation.log.finish()
