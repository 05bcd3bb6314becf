"""Exactly-once write tools on the real PostgreSQL: interruptions and retries never write a
second row, and what the member last heard is what the database holds.

The scripted run drives the four write tools through `GymTools.call` with cancellations at
random points (before, during and after the commit: a barge-in or a worker stopping the
tool) and the repeats that follow them: the same tool-call id again (an LLM or framework
retry), a new id in the same turn (a model looping), the same arguments over MCP (no call
id), a concurrent duplicate, and for a booking the member asking again in a later turn.
The conversation tests then go through the real AgentSession and the LLM stand-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from livekit.agents.voice.run_result import RunResult

from agent.conversation import build_conversation
from agent.speech_format import say_datetime
from agent.tools import BOOKING_HORIZON_DAYS, CoachNotification, GymTools, SessionIds, ToolFailure, livekit_tools
from jarvis.db import create_pool
from jarvis_local.llm_standin import CallTool, EchoToolResult, LLMStandIn
from jarvis_local.stack import LocalStack
from tests.brain.conftest import member_context, standin_llm, started
from tests.platform.gym_factory import create_gym

pytestmark = pytest.mark.integration

PARIS = ZoneInfo("Europe/Paris")
COACHES = ("Karim", "Sarah", "Julien", "Inès")
OPEN_ALL_DAY = {day: [["06:00", "22:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
WRITE_TOOLS = ("book_session", "contact_coach", "log_churn_risk", "create_mission")
INTENDED_EFFECTS = 300
CONCURRENT_SCENARIOS = 6


@dataclass
class Gym:
    gym_id: str
    member_id: str
    coach_ids: dict[str, str]


async def gym_with_coaches(dsn: str) -> Gym:
    """A gym of its own (no row shared with other tests): open every day, four coaches free all day."""
    gym = await create_gym(dsn, city="Lyon")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE gyms SET opening_hours = $2::jsonb WHERE id = $1", gym.gym_id, _json(OPEN_ALL_DAY))
        coach_ids = {}
        for name in COACHES:
            coach_ids[name] = str(
                await conn.fetchval(
                    "INSERT INTO gym_staff (gym_id, first_name, role, availability)"
                    " VALUES ($1, $2, 'coach', $3::jsonb) RETURNING id",
                    gym.gym_id,
                    name,
                    _json(OPEN_ALL_DAY),
                )
            )
        await conn.execute(
            "UPDATE gym_members SET preferred_coach_id = $2 WHERE id = $1", gym.member_id, coach_ids["Karim"]
        )
    finally:
        await conn.close()
    return Gym(gym.gym_id, gym.member_id, coach_ids)


def _json(value: Any) -> str:
    return json.dumps(value)


@pytest.fixture
async def own_pool(stack: LocalStack) -> AsyncIterator[Any]:
    # Its own pool: cancelled queries leave connections to be reset, never the shared pool's.
    db = await create_pool(stack.pg_dsn, min_size=2, max_size=12)
    yield db
    await db.close()


# --- the scripted run --------------------------------------------------------------------------


@dataclass
class Effect:
    """One thing the member wants done once, and what happened on the way."""

    tool: str
    arguments: dict[str, Any]
    session_id: str
    turn: str
    over_mcp: bool
    answers: list[str] = field(default_factory=list)
    interruptions: int = 0
    committed_then_cancelled: int = 0
    retries: int = 0


def script_effects(rng: random.Random, gym: Gym, sessions: list[str], batch: int = 0) -> list[Effect]:
    """INTENDED_EFFECTS distinct effects; a later batch books other slots and numbers its requests on.

    Every slot lies within the booking horizon (agent/tools.py, 90 days): a second batch once booked
    days 72-142 ahead, and the tool rightly refused those past 90 (CI, 2026-12-03)."""
    effects = []
    first_day = datetime.now(PARIS).date() + timedelta(days=2)
    slots = [(day, hour) for day in range(BOOKING_HORIZON_DAYS - 5) for hour in range(7, 21)]
    random.Random(14).shuffle(slots)  # one order for every batch: each takes its own slots
    books = INTENDED_EFFECTS // len(WRITE_TOOLS) + 1
    slots = slots[batch * books : (batch + 1) * books]
    for index in range(batch * INTENDED_EFFECTS, (batch + 1) * INTENDED_EFFECTS):
        tool = WRITE_TOOLS[index % len(WRITE_TOOLS)]
        if tool == "book_session":
            day, hour = slots.pop()
            when = datetime.combine(first_day + timedelta(days=day), datetime.min.time()).replace(hour=hour)
            arguments: dict[str, Any] = {"datetime": when.isoformat(timespec="minutes"), "coach": rng.choice(COACHES)}
        elif tool == "contact_coach":
            arguments = {
                "message": f"Douleur à l'épaule, demande numéro {index}",
                "urgency": rng.choice(["low", "high"]),
            }
        elif tool == "log_churn_risk":
            arguments = {"reason": f"Machines en panne, visite {index}", "severity": rng.choice(["medium", "critical"])}
        else:
            arguments = {"title": f"Rameur numéro {index} en panne", "description": "Bruit au démarrage."}
        effects.append(
            Effect(tool, arguments, rng.choice(sessions), f"turn-{uuid.uuid4().hex[:8]}", over_mcp=index % 5 == 4)
        )
    return effects


async def committed(pool: Any, session_id: str, call_id: str | None, tool: str) -> bool:
    async with pool.acquire() as conn:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM tool_effects WHERE session_id = $1 AND effect_key = $2",
                session_id,
                f"call:{tool}:{call_id}",
            )
        )


@dataclass
class Harness:
    """What the scripted run shares: the gym, the pools, the coach's notifications."""

    gym: Gym
    pool: Any
    # Its commits wait on a synchronous standby that does not exist, until their caller is cut off.
    held_pool: Any
    admin: Any
    held_gate: asyncio.Lock = field(default_factory=asyncio.Lock)
    notified: Counter[str] = field(default_factory=Counter)


async def play(harness: Harness, effect: Effect, rng: random.Random) -> None:
    """The first call and its repeats; the last attempt runs to its end (the member hears it)."""

    async def notify(notification: CoachNotification) -> None:
        harness.notified[notification.request_id] += 1

    ids = SessionIds(harness.gym.gym_id, harness.gym.member_id, effect.session_id)
    tools = GymTools(harness.pool, ids, notify_coach=notify)
    held_tools = GymTools(harness.held_pool, ids, notify_coach=notify)
    call_id: str | None = None if effect.over_mcp else f"call_{uuid.uuid4().hex[:12]}"
    turn: str | None = None if effect.over_mcp else effect.turn
    attempts = rng.randint(2, 5)
    for attempt in range(attempts):
        last = attempt == attempts - 1
        if attempt > 0:
            effect.retries += 1
            repeat = rng.choice(["same call", "new call same turn", "concurrent"])
            if effect.tool == "book_session" and not effect.over_mcp and rng.random() < 0.25:
                repeat = "next turn"
            if repeat == "new call same turn" and not effect.over_mcp:
                call_id = f"call_{uuid.uuid4().hex[:12]}"
            elif repeat == "next turn":
                call_id, turn = f"call_{uuid.uuid4().hex[:12]}", f"turn-{uuid.uuid4().hex[:8]}"
            elif repeat == "concurrent":
                # A duplicate racing the attempt below, itself cut off or not.
                twin = asyncio.create_task(tools.call(effect.tool, effect.arguments, call_id=call_id, turn=turn))
                await cut_or_finish(twin, rng, effect, always_finish=False)
        done_before = call_id is not None and await committed(harness.pool, effect.session_id, call_id, effect.tool)
        if not last and rng.random() < 0.15:
            # Cut off while PostgreSQL holds the commit: the transaction commits all the same.
            async with harness.held_gate:
                running = asyncio.create_task(
                    held_tools.call(effect.tool, effect.arguments, call_id=call_id, turn=turn)
                )
                if await commit_waiting(harness.admin, running):
                    effect.interruptions += 1
                    running.cancel()
                await cut_or_finish(running, rng, effect, always_finish=True)
        else:
            running = asyncio.create_task(tools.call(effect.tool, effect.arguments, call_id=call_id, turn=turn))
            await cut_or_finish(running, rng, effect, always_finish=last)
        if running.cancelled() and not done_before and call_id is not None:
            # Cut off between its commit and its answer: the member heard nothing, the row exists.
            if await committed(harness.pool, effect.session_id, call_id, effect.tool):
                effect.committed_then_cancelled += 1


async def cut_or_finish(task: asyncio.Task[str], rng: random.Random, effect: Effect, always_finish: bool) -> None:
    if not always_finish and rng.random() < 0.8:
        # Anywhere from before the first statement to after the commit (a write takes a few ms).
        await asyncio.sleep(rng.uniform(0, 0.025))
        if not task.done():
            effect.interruptions += 1
            task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        try:
            effect.answers.append(task.result())
        except ToolFailure as failure:
            effect.answers.append(f"FAILURE: {failure.message}")


async def test_a_thousand_interruptions_and_retries_write_each_effect_once(stack: LocalStack, own_pool: Any) -> None:
    rng = random.Random(14)
    gym = await gym_with_coaches(stack.pg_dsn)
    sessions = [str(uuid.uuid4()) for _ in range(20)]
    effects = script_effects(rng, gym, sessions)
    admin = await asyncpg.connect(stack.pg_dsn)
    held_pool = await held_commit_pool(stack.pg_dsn)
    harness = Harness(gym, own_pool, held_pool, admin)

    started_at = time.perf_counter()
    gate = asyncio.Semaphore(CONCURRENT_SCENARIOS)

    async def run(effect: Effect, seed: int) -> None:
        async with gate:
            await play(harness, effect, random.Random(seed))

    def totals() -> tuple[int, int, int]:
        return (sum(e.interruptions for e in effects), sum(e.retries for e in effects),
                sum(e.committed_then_cancelled for e in effects))  # fmt: skip

    try:
        await hold_commits(admin, True)
        batch = 0
        while True:
            batch_effects = effects if batch == 0 else script_effects(rng, gym, sessions, batch)
            if batch:
                effects.extend(batch_effects)
            await asyncio.gather(*(run(effect, rng.randrange(2**32)) for effect in batch_effects))
            interruptions, retries, after_commit = totals()
            # How many cuts land depends on the machine's speed (a write done within the random
            # window is not cut): play on until the scenario holds the cuts it claims.
            batch += 1
            if (interruptions + retries >= 1000 and after_commit >= 20) or batch == 4:
                break
    finally:
        await hold_commits(admin, False)
        await admin.close()
        await held_pool.close()
    elapsed = time.perf_counter() - started_at
    async with own_pool.acquire() as conn:
        rows = await database_effects(conn, gym)
    print(
        f"\nexactly once: {len(effects)} intended effects, {interruptions} interruptions"
        f" ({after_commit} after the commit), {retries} retries, {interruptions + retries} in all;"
        f" rows written: {sum(len(r) for r in rows.values())}"
        f" ({', '.join(f'{tool} {len(r)}' for tool, r in rows.items())}); {elapsed:.1f} s"
    )

    assert interruptions + retries >= 1000
    assert after_commit >= 20, "too few cuts after a commit: the scenario proves less than it says"
    for tool in WRITE_TOOLS:
        intended = [e for e in effects if e.tool == tool]
        assert len(rows[tool]) == len(intended), f"{tool}: {len(rows[tool])} rows for {len(intended)} effects"
        by_identity = {row_identity(tool, row): row for row in rows[tool]}
        for effect in intended:
            row = by_identity[effect_identity(tool, effect.arguments)]
            # Every answer the member heard says what the database holds: no false "Rien n'est réservé".
            assert effect.answers, effect
            for answer in effect.answers:
                assert answer in true_answers(tool, row), (answer, dict(row))
    # A repeat never notifies the coach again (a cut-off first call may not have notified at all).
    assert all(count == 1 for count in harness.notified.values())
    assert set(harness.notified) <= {str(row["id"]) for row in rows["contact_coach"]}


async def held_commit_pool(dsn: str) -> Any:
    # The stack runs with synchronous_commit=off; this pool's commits wait for the standby.
    return await asyncpg.create_pool(
        dsn, min_size=1, max_size=4, statement_cache_size=0, server_settings={"synchronous_commit": "on"}
    )


async def commit_waiting(admin: Any, running: asyncio.Task[str]) -> bool:
    """True once a held commit waits (the only one: held writes go one at a time); False if the
    call ended first (a repeat that found its result writes nothing, so has nothing to commit)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not running.done():
        if await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"):
            return True
        await asyncio.sleep(0.005)
    assert running.done(), "the write never reached its commit"
    return False


async def database_effects(conn: Any, gym: Gym) -> dict[str, list[Any]]:
    return {
        "book_session": await conn.fetch(
            "SELECT b.id, s.first_name AS coach, b.starts_at FROM bookings b JOIN gym_staff s ON s.id = b.coach_id"
            " WHERE b.gym_id = $1 AND b.member_id = $2",
            gym.gym_id,
            gym.member_id,
        ),
        "contact_coach": await conn.fetch(
            "SELECT r.id, s.first_name AS coach, r.message, r.urgency FROM coach_requests r"
            " LEFT JOIN gym_staff s ON s.id = r.coach_id WHERE r.gym_id = $1",
            gym.gym_id,
        ),
        "log_churn_risk": await conn.fetch(
            "SELECT id, reason, severity FROM churn_flags WHERE gym_id = $1", gym.gym_id
        ),
        "create_mission": await conn.fetch("SELECT id, title, description FROM missions WHERE gym_id = $1", gym.gym_id),
    }


IDENTITY_FIELD = {"contact_coach": "message", "log_churn_risk": "reason", "create_mission": "title"}


def effect_identity(tool: str, arguments: dict[str, Any]) -> Any:
    """What tells two effects of one tool apart, from the arguments..."""
    if tool == "book_session":
        return datetime.fromisoformat(arguments["datetime"]), arguments["coach"]
    return arguments[IDENTITY_FIELD[tool]]


def row_identity(tool: str, row: Any) -> Any:
    """...and from the row written."""
    if tool == "book_session":
        return row["starts_at"].astimezone(PARIS).replace(tzinfo=None), row["coach"]
    return row[IDENTITY_FIELD[tool]]


def true_answers(tool: str, row: Any) -> set[str]:
    if tool == "book_session":
        moment = say_datetime(row["starts_at"].astimezone(PARIS))
        return {
            f"C'est réservé : séance avec {row['coach']} le {moment}.",
            f"C'est déjà réservé : séance avec {row['coach']} le {moment}.",
        }
    if tool == "contact_coach":
        when = {"high": "dans les dix minutes", "medium": "dans l'heure", "low": "dans la journée"}[row["urgency"]]
        return {f"C'est transmis à {row['coach']}, qui reviendra vers toi {when}."}
    if tool == "log_churn_risk":
        return {"C'est noté pour le responsable de la salle. Ne le mentionne pas au membre : continue de l'aider."}
    return {f"C'est transmis à l'équipe : « {row['title']} »."}


# --- cut off during the commit -----------------------------------------------------------------


async def test_a_write_cut_off_during_its_commit_is_answered_by_its_retry(stack: LocalStack) -> None:
    """The worst moment, made certain rather than left to chance: PostgreSQL holds each COMMIT
    (a synchronous standby that does not exist), the caller is cancelled while it waits, and the
    transaction is committed all the same, as after a barge-in or a crash at that instant. The
    retry with the same call id finds the stored result: one row, and the true answer."""
    gym = await gym_with_coaches(stack.pg_dsn)
    session_id = str(uuid.uuid4())
    own_pool = await held_commit_pool(stack.pg_dsn)
    tools = GymTools(own_pool, SessionIds(gym.gym_id, gym.member_id, session_id))
    rng = random.Random(3)
    effects = script_effects(rng, gym, [session_id])[:20]
    calls = [f"call_{uuid.uuid4().hex[:12]}" for _ in effects]

    admin = await asyncpg.connect(stack.pg_dsn)
    try:
        await hold_commits(admin, True)
        for effect, call_id in zip(effects, calls, strict=True):
            running = asyncio.create_task(tools.call(effect.tool, effect.arguments, call_id=call_id, turn=effect.turn))
            assert await commit_waiting(admin, running)
            running.cancel()
            await asyncio.wait([running])
            assert running.cancelled()
    finally:
        await hold_commits(admin, False)
        await admin.close()

    async with own_pool.acquire() as conn:
        cut_off_rows = await database_effects(conn, gym)
    # Every caller was cancelled, yet every write is there: the member heard nothing of it.
    assert sum(len(r) for r in cut_off_rows.values()) == len(effects)

    answers = [
        await tools.call(effect.tool, effect.arguments, call_id=call_id, turn=effect.turn)
        for effect, call_id in zip(effects, calls, strict=True)
    ]
    async with own_pool.acquire() as conn:
        rows = await database_effects(conn, gym)
    await own_pool.close()
    print(
        f"\ncut off during the commit: {len(effects)} writes cancelled while PostgreSQL held their commit,"
        f" rows after the cut {sum(len(r) for r in cut_off_rows.values())}, after the retries"
        f" {sum(len(r) for r in rows.values())}"
    )
    for effect, answer in zip(effects, answers, strict=True):
        [row] = [
            r
            for r in rows[effect.tool]
            if row_identity(effect.tool, r) == effect_identity(effect.tool, effect.arguments)
        ]
        assert answer in true_answers(effect.tool, row)
    assert sum(len(r) for r in rows.values()) == len(effects)


async def hold_commits(admin: Any, hold: bool) -> None:
    if hold:
        await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'jarvis_absent_standby'")
    else:
        await admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
    await admin.execute("SELECT pg_reload_conf()")
    # The postmaster passes the reload on to every backend, which reads it at its next command: seen
    # here first (a loaded box may take longer than any fixed pause), then a moment for the others.
    expected = "jarvis_absent_standby" if hold else ""
    for _ in range(100):
        if await admin.fetchval("SHOW synchronous_standby_names") == expected:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"PostgreSQL did not take synchronous_standby_names = {expected!r} within 5 s")
    await asyncio.sleep(0.3)


# --- through the conversation: the stand-in LLM repeats, the member barges in ------------------


async def conversation_for(stack: LocalStack, pool: Any, llm_server: LLMStandIn) -> tuple[Any, Gym]:
    gym = await gym_with_coaches(stack.pg_dsn)
    context = await member_context(pool, gym.gym_id, gym.member_id)
    return await started(build_conversation(context, pool=pool, llm=standin_llm(llm_server))), gym


def tuesday_at(hour: int) -> str:
    today = datetime.now(PARIS).date()
    day = today + timedelta(days=(1 - today.weekday()) % 7 or 7)
    return datetime.combine(day, datetime.min.time()).replace(hour=hour).isoformat(timespec="minutes")


async def test_the_llm_repeating_a_write_within_its_answer_writes_it_once(
    stack: LocalStack, pool: Any, llm_server: LLMStandIn
) -> None:
    booking = {"datetime": tuesday_at(10), "coach": "Sarah"}
    mission = {"title": "Rameur numéro trois en panne", "description": "Il ne s'allume plus."}
    conversation, gym = await conversation_for(stack, pool, llm_server)
    async with conversation.session:
        llm_server.script(
            [
                CallTool("book_session", booking, call_id="call_booking"),
                CallTool("book_session", booking, call_id="call_booking"),  # the same call id again
                EchoToolResult(),
            ]
        )
        booked: RunResult[None] = await conversation.session.run(user_input="Réserve-moi mardi à dix heures avec Sarah")
        llm_server.script(
            [
                CallTool("create_mission", mission),
                CallTool("create_mission", {**mission, "title": "  rameur numéro TROIS en panne"}),  # new id, same turn
                EchoToolResult(),
            ]
        )
        reported: RunResult[None] = await conversation.session.run(user_input="Le rameur trois est en panne")

    outputs = [e.item.output for e in booked.events if e.type == "function_call_output"]
    assert len(outputs) == 2 and outputs[0] == outputs[1] and outputs[0].startswith("C'est réservé : séance avec Sarah")
    assert final_answer(booked) == outputs[0]
    outputs = [e.item.output for e in reported.events if e.type == "function_call_output"]
    assert outputs == ["C'est transmis à l'équipe : « Rameur numéro trois en panne »."] * 2
    async with pool.acquire() as conn:
        rows = await database_effects(conn, gym)
    assert (len(rows["book_session"]), len(rows["create_mission"])) == (1, 1)


async def test_a_booking_the_member_talked_over_is_kept_and_heard_as_booked(
    stack: LocalStack, pool: Any, llm_server: LLMStandIn
) -> None:
    """Barge-in while the booking waits on the database: the booking commits, its result is
    in the LLM's context, and the member hears "c'est réservé" (never "Rien n'est réservé"),
    even when the model calls the tool again in a later turn."""
    booking = {"datetime": tuesday_at(15), "coach": "Karim"}
    conversation, gym = await conversation_for(stack, pool, llm_server)
    session = conversation.session
    # Another kiosk's transaction holds Karim's row: the booking waits on its lock, as on a busy day.
    other_kiosk = await asyncpg.connect(stack.pg_dsn)
    holding = other_kiosk.transaction()
    await holding.start()
    await other_kiosk.execute("SELECT id FROM gym_staff WHERE id = $1 FOR UPDATE", gym.coach_ids["Karim"])
    async with session:
        llm_server.script([CallTool("book_session", booking), EchoToolResult()])
        first_turn = asyncio.ensure_future(session.run(user_input="Réserve-moi mardi à quinze heures avec Karim"))
        await waiting_on_lock(stack.pg_dsn)
        session.interrupt()  # the member talks over JARVIS while the tool runs
        await asyncio.sleep(0.2)
        await holding.rollback()
        await other_kiosk.close()
        with contextlib.suppress(Exception):  # the interrupted run may end either way; the facts are below
            await asyncio.wait_for(first_turn, 15)

        tool_outputs = [item for item in session.current_agent.chat_ctx.items if item.type == "function_call_output"]
        assert [o.output for o in tool_outputs] == [booked_answer(await bookings(pool, gym))]

        llm_server.script([EchoToolResult()])  # the model relays what its context says
        asked: RunResult[None] = await session.run(user_input="Alors, c'est réservé ?")
        llm_server.script([CallTool("book_session", booking), EchoToolResult()])  # the model books again
        again: RunResult[None] = await session.run(user_input="Tu es sûr ? Réserve-le bien.")

    rows = await bookings(pool, gym)
    assert len(rows) == 1
    assert final_answer(asked) == booked_answer(rows)
    assert final_answer(again) == booked_answer(rows).replace("C'est réservé", "C'est déjà réservé")
    assert "Rien n'est réservé" not in final_answer(again)


async def test_a_write_whose_caller_is_cancelled_finishes_and_answers_its_true_result(
    stack: LocalStack, pool: Any
) -> None:
    """Below LiveKit: the tool itself is cancelled while its booking waits (a framework that
    cancels tools on barge-in, the session closing). The write is shielded, commits, and the
    tool returns its result, which LiveKit records as the call's output in the chat context."""
    gym = await gym_with_coaches(stack.pg_dsn)
    tools = GymTools(pool, SessionIds(gym.gym_id, gym.member_id, str(uuid.uuid4())))
    [book_session] = [t for t in livekit_tools(tools) if t.info.name == "book_session"]
    # What the tool reads of LiveKit's RunContext: the call and the turn.
    run_context = SimpleNamespace(
        function_call=SimpleNamespace(call_id="call_cancelled"), speech_handle=SimpleNamespace(id="speech_1")
    )
    other_kiosk = await asyncpg.connect(stack.pg_dsn)
    holding = other_kiosk.transaction()
    await holding.start()
    await other_kiosk.execute("SELECT id FROM gym_staff WHERE id = $1 FOR UPDATE", gym.coach_ids["Julien"])
    running = asyncio.ensure_future(book_session({"datetime": tuesday_at(17), "coach": "Julien"}, run_context))
    await waiting_on_lock(stack.pg_dsn)
    running.cancel()
    await asyncio.sleep(0.1)
    await holding.rollback()
    await other_kiosk.close()

    answer = await asyncio.wait_for(running, 10)
    assert answer == booked_answer(await bookings(pool, gym))


async def bookings(pool: Any, gym: Gym) -> list[Any]:
    async with pool.acquire() as conn:
        return (await database_effects(conn, gym))["book_session"]


def booked_answer(rows: list[Any]) -> str:
    [row] = rows
    return f"C'est réservé : séance avec {row['coach']} le {say_datetime(row['starts_at'].astimezone(PARIS))}."


def final_answer(result: RunResult[None]) -> str:
    messages = [e.item for e in result.events if e.type == "message" and e.item.role == "assistant"]
    return messages[-1].text_content or "" if messages else ""


async def waiting_on_lock(dsn: str) -> None:
    # Its own connection: inside a transaction, pg_stat_activity would show one frozen snapshot.
    admin = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the booking never reached the coach's lock")
    finally:
        await admin.close()
