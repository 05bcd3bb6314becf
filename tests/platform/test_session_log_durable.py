"""Nothing a member said is lost from the session log, whatever happens to the database or the
worker: real processes on a stack of this module's own (PostgreSQL stopped for real with
pg_ctl, the worker killed with SIGKILL), the worker's outbox on disk, its sweeper replaying it.

How another test asserts the same (the fault matrix): after the fault, poll
`SELECT kind, text FROM jarvis_interactions WHERE session_id = $1 ORDER BY id` until it equals
what the kiosk typed and heard, and `voice_sessions.outcome` until it is 'interrompue' (worker
killed) or the session's own outcome (database down, worker alive); the outbox folder
(`JARVIS_SESSION_LOG__SPOOL_DIR`, the stack's `session-log/`) ends empty.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from livekit import api, rtc

from agent.mcp_server import SessionRefused, resolve_session
from agent.session_log import Spool, read_spool
from agent.settings import AgentSettings, SessionLogSettings
from agent.sweeper import Sweeper
from jarvis.migrate import migrate
from jarvis_local.kiosk_sim import agent_participant, open_session, poll
from jarvis_local.llm_standin import LLMStandIn, Reply, Say, last_user_text
from jarvis_local.stack import LocalStack, local_stack
from tests.conftest import CAMILLE, LYON_GYM_ID, LYON_KEY

pytestmark = pytest.mark.integration

AGENT_NAME = "jarvis-durable-log"
WORKER_LOG = "agent-durable"
OUTAGE_S = 60.0  # the figure
# Short enough for a test, with the same ratios as the defaults (heartbeat << sweep_after).
SWEEP_ENV = {
    "JARVIS_SESSION_LOG__HEARTBEAT_S": "2",
    "JARVIS_SESSION_LOG__SWEEP_INTERVAL_S": "1",
    "JARVIS_SESSION_LOG__SWEEP_AFTER_S": "10",
}


def noted(request: dict[str, Any]) -> Reply:
    """Each answer names the question, so the log's order can be checked turn by turn."""
    return Say(f"Bien noté : {last_user_text(request)}")


@pytest.fixture(scope="module")
def durable_stack() -> Iterator[LocalStack]:
    """PostgreSQL, Redis and LiveKit of this module alone: stopping its database harms no other test."""
    with local_stack() as stack:
        asyncio.run(migrate(stack.pg_dsn, seed_demo=True))
        yield stack


@pytest.fixture(autouse=True)
def database_back_up(durable_stack: LocalStack) -> Iterator[None]:
    """A test that fails during its outage must not leave the next one without a database."""
    yield
    if not any(name == "postgres" for name, _ in durable_stack.processes):
        durable_stack.start_postgres()


@pytest.fixture(scope="module")
async def jarvis(durable_stack: LocalStack) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The stand-in LLM, a token service and a text-mode worker; yields (token URL, worker env)."""
    async with LLMStandIn(noted) as llm_server:
        env = {"JARVIS_SPEECH__MODE": "text", **llm_server.worker_env, **SWEEP_ENV}
        token_url = await asyncio.to_thread(durable_stack.start_jarvis, AGENT_NAME, env, WORKER_LOG)
        yield token_url, {"JARVIS_NUM_IDLE_PROCESSES": "1", **env, "JARVIS_AGENT_NAME": AGENT_NAME}


@dataclass
class TextKiosk:
    """A kiosk in chat mode: types the member's questions, keeps JARVIS's answers."""

    session: dict[str, Any]
    room: rtc.Room = field(default_factory=rtc.Room)
    heard: list[str] = field(default_factory=list)
    said: list[tuple[str, str]] = field(default_factory=list)  # (kind, text), as the log should hold it

    async def join(self) -> None:
        def on_text(reader: rtc.TextStreamReader, _identity: str) -> None:
            async def read() -> None:
                if (text := await reader.read_all()).strip():
                    self.heard.append(text)

            asyncio.get_running_loop().create_task(read())

        self.room.register_text_stream_handler("lk.transcription", on_text)
        await self.room.connect(self.session["livekit_url"], self.session["token"])
        await poll(lambda: agent_participant(self.room), 60, what="JARVIS to join")
        greeting = await poll(lambda: next((h for h in self.heard if "Camille" in h), None), 30, what="the greeting")
        self.said.append(("agent", greeting))

    async def ask(self, question: str) -> None:
        await self.room.local_participant.send_text(question, topic="lk.chat")
        answer = f"Bien noté : {question}"
        await poll(lambda: answer in self.heard, 30, what=f"the answer to {question!r}")
        self.said += [("user", question), ("agent", answer)]

    async def leave(self) -> None:
        await self.room.disconnect()


def outbox_rows(stack: LocalStack, session_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(spool_dir(stack).glob(f"{session_id}.*.jsonl")):
        rows += read_spool(path)
    return rows


def spool_dir(stack: LocalStack) -> Path:
    return Path(stack.env()["JARVIS_SESSION_LOG__SPOOL_DIR"])


async def logged(stack: LocalStack, session_id: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        sql = "SELECT kind, text FROM jarvis_interactions WHERE session_id = $1 ORDER BY id"
        return [(r["kind"], r["text"]) for r in await conn.fetch(sql, session_id)]
    finally:
        await conn.close()


async def session_row(stack: LocalStack, session_id: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        return await conn.fetchrow("SELECT * FROM voice_sessions WHERE id = $1", session_id)
    finally:
        await conn.close()


def kill_9(stack: LocalStack, name: str) -> int:
    """SIGKILL the worker and every process under it (its jobs): nothing gets to flush. Returns
    how many processes were killed."""
    root = next(proc for n, proc in stack.processes if n == name and proc.poll() is None)
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [root.pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    for pid in reversed(tree):  # the jobs first: none may notice its parent died and clean up
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    root.wait(timeout=10)
    return len(tree)


async def delete_room(stack: LocalStack, room: str) -> None:
    lk = api.LiveKitAPI(stack.livekit_url.replace("ws://", "http://"), stack.livekit_api_key, stack.livekit_api_secret)
    try:
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
    finally:
        await lk.aclose()


async def test_postgres_down_60s_at_session_start_then_worker_killed_loses_no_turn(
    durable_stack: LocalStack, jarvis: tuple[str, dict[str, str]]
) -> None:
    stack = durable_stack
    token_url, worker_env = jarvis
    # Both badges scanned while the database is up (the token service needs it).
    visit_a = await open_session(token_url, LYON_KEY, CAMILLE["badge_id"], kiosk_id="accueil-1")
    visit_b = await open_session(token_url, LYON_KEY, CAMILLE["badge_id"], kiosk_id="accueil-2")

    await asyncio.to_thread(stack.stop_postgres)
    down_at = time.monotonic()

    # Visit A: JARVIS starts while the database is down; the member talks; the worker is killed.
    kiosk_a = TextKiosk(visit_a)
    await kiosk_a.join()
    for question in ("Vous ouvrez à quelle heure demain ?", "Il y a un cours de RPM ce soir ?", "Merci !"):
        await kiosk_a.ask(question)
    # "Said" is what the worker spooled: wait for the last answer's row (a few ms after the kiosk heard it).
    last_answer = kiosk_a.said[-1][1]
    await poll(lambda: any(r.get("text") == last_answer for r in outbox_rows(stack, visit_a["session_id"])), 10,
               what="the last answer in the outbox")  # fmt: skip
    killed = await asyncio.to_thread(kill_9, stack, WORKER_LOG)
    killed_at = time.monotonic() - down_at
    await kiosk_a.leave()
    await delete_room(stack, visit_a["room"])
    assert outbox_rows(stack, visit_a["session_id"]), "the killed job's outbox is on disk"

    # A new worker process (what systemd does after a crash); the database is still down.
    await asyncio.to_thread(stack.start_agent_worker, worker_env, WORKER_LOG)
    restarted_at = time.monotonic() - down_at
    # Visit B: on the new worker, still during the outage; it stays on across the recovery.
    kiosk_b = TextKiosk(visit_b)
    await kiosk_b.join()
    b_ready_at = time.monotonic() - down_at
    for question in ("Je voudrais voir un coach.", "Plutôt le matin."):
        await kiosk_b.ask(question)
    assert not await database_reachable(stack)

    await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    await asyncio.to_thread(stack.start_postgres)
    up_at = time.monotonic()
    outage_s = up_at - down_at

    # Every row of A, in order, from the dead job's outbox; then A ended by the sweeper.
    await poll(lambda: _equals(logged(stack, visit_a["session_id"]), kiosk_a.said), 60, every_s=0.1,
               what="visit A's turns in the database")  # fmt: skip
    drained_a_s = time.monotonic() - up_at
    await poll(lambda: _ended(stack, visit_a["session_id"]), 60, every_s=0.1, what="the sweeper to end visit A")
    swept_a_s = time.monotonic() - up_at
    # B's rows reached the database from its live job's outbox.
    await poll(lambda: _equals(logged(stack, visit_b["session_id"]), kiosk_b.said), 60, every_s=0.1,
               what="visit B's turns in the database")  # fmt: skip
    drained_b_s = time.monotonic() - up_at

    row_a = await session_row(stack, visit_a["session_id"])
    assert row_a is not None
    assert row_a["outcome"] == "interrompue" and row_a["gym_id"] == uuid.UUID(LYON_GYM_ID)
    assert row_a["ended_at"] >= row_a["started_at"] and row_a["duration_s"] < killed_at + 5
    found_a = await logged(stack, visit_a["session_id"])
    assert found_a == kiosk_a.said

    # Over MCP, the ended session is refused.
    pool = await asyncpg.create_pool(stack.pg_dsn, min_size=0, max_size=1)
    try:
        with pytest.raises(SessionRefused):
            await resolve_session(pool, f"Bearer {LYON_KEY}", visit_a["session_id"])
        assert (await resolve_session(pool, f"Bearer {LYON_KEY}", visit_b["session_id"])).session_id
    finally:
        await pool.close()

    # B goes on after the recovery and ends as usual.
    await kiosk_b.ask("À quelle heure ferme la salle ?")
    await kiosk_b.leave()
    ended_b = await poll(lambda: _ended(stack, visit_b["session_id"], "completed"), 30, every_s=0.2,
                         what="visit B's own end")  # fmt: skip
    found_b = await logged(stack, visit_b["session_id"])
    assert found_b == kiosk_b.said and ended_b["summary"]
    await poll(lambda: not list(spool_dir(stack).glob("*.jsonl")), 10, what="the outbox folder to empty")

    print(
        f"\nsession log, PostgreSQL down {outage_s:.1f} s (pg_ctl stop/start), worker killed (SIGKILL, "
        f"{killed} processes) {killed_at:.1f} s into the outage, new worker registered at {restarted_at:.1f} s, "
        f"visit B greeted at {b_ready_at:.1f} s:\n"
        f"  visit A (killed): rows expected {len(kiosk_a.said)}, found {len(found_a)}; outbox drained "
        f"{drained_a_s:.1f} s after PostgreSQL was back; ended 'interrompue' by the sweeper {swept_a_s:.1f} s after\n"
        f"  visit B (alive across the outage): rows expected {len(kiosk_b.said)}, found {len(found_b)}; "
        f"its outbox drained {drained_b_s:.1f} s after PostgreSQL was back; ended '{ended_b['outcome']}'"
    )


async def database_reachable(stack: LocalStack) -> bool:
    try:
        conn = await asyncpg.connect(stack.pg_dsn, timeout=2)
    except (OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def _equals(found: Any, expected: list[tuple[str, str]]) -> bool:
    try:
        return bool(await found == expected)
    except (OSError, asyncpg.PostgresError):
        return False  # still starting


async def _ended(stack: LocalStack, session_id: str, outcome: str = "interrompue") -> Any:
    row = await session_row(stack, session_id)
    return row if row is not None and row["ended_at"] is not None and row["outcome"] == outcome else None


# --- the sweeper's two rules, in-process against this module's database ---------------------------


def sweeper_settings(stack: LocalStack, folder: Path, sweep_after_s: float = 10.0) -> AgentSettings:
    log = SessionLogSettings(spool_dir=folder, heartbeat_s=sweep_after_s / 3, sweep_after_s=sweep_after_s)
    return AgentSettings(database_url=stack.pg_dsn, session_log=log)


async def test_an_orphan_outbox_is_replayed_once_and_its_session_ended(
    durable_stack: LocalStack, tmp_path: Path
) -> None:
    stack = durable_stack
    session_id = str(uuid.uuid4())
    now = time.time()
    rows: list[dict[str, Any]] = [
        {"op": "session", "session_id": session_id, "gym_id": LYON_GYM_ID, "member_id": CAMILLE["member_id"],
         "kiosk_id": "accueil-9", "room": f"jarvis-{session_id}", "at": now - 30},
        *({"op": "interaction", "id": str(uuid.uuid4()), "session_id": session_id, "gym_id": LYON_GYM_ID,
           "kind": kind, "text": text, "tool_name": None, "tool_args": None, "tool_result": None,
           "latency_ms": None, "interrupted": False, "at": now - 20 + i}
          for i, (kind, text) in enumerate([("agent", "Bonjour Camille"), ("user", "Salut"), ("agent", "Bien noté")])),
    ]  # fmt: skip
    # What a job leaves when it is killed: its outbox, unlocked.
    spool = Spool.create(tmp_path, session_id, 1 << 20)
    spool.append(rows)
    spool.release()
    copy = tmp_path / "copy"
    shutil.copy(spool.path, copy)

    pool = await asyncpg.create_pool(stack.pg_dsn, min_size=0, max_size=2)
    try:
        sweeper = Sweeper(sweeper_settings(stack, tmp_path), pool=pool)
        first = await sweeper.sweep_once()
        assert first.replayed_rows == 4 and first.ended_orphans == [session_id]
        assert not spool.path.exists()
        # The same outbox replayed again (a sweeper killed before it removed the file): no row twice.
        shutil.copy(copy, spool.path)
        await sweeper.sweep_once()
    finally:
        await pool.close()
    assert await logged(stack, session_id) == [("agent", "Bonjour Camille"), ("user", "Salut"), ("agent", "Bien noté")]
    ended = await session_row(stack, session_id)
    assert ended is not None and ended["outcome"] == "interrompue"
    assert abs(ended["ended_at"].timestamp() - (now - 18)) < 1  # when the job was last heard of


async def test_a_live_outbox_is_left_to_its_job(durable_stack: LocalStack, tmp_path: Path) -> None:
    spool = Spool.create(tmp_path, str(uuid.uuid4()), 1 << 20)  # held locked, as a live job holds it
    try:
        pool = await asyncpg.create_pool(durable_stack.pg_dsn, min_size=0, max_size=1)
        try:
            result = await Sweeper(sweeper_settings(durable_stack, tmp_path), pool=pool).sweep_once()
        finally:
            await pool.close()
        assert result.replayed_rows == 0 and spool.path.exists()
    finally:
        spool.remove()


async def test_a_session_whose_heartbeat_stopped_is_ended_as_interrompue(
    durable_stack: LocalStack, tmp_path: Path
) -> None:
    stack = durable_stack
    stale, live = str(uuid.uuid4()), str(uuid.uuid4())
    pool = await asyncpg.create_pool(stack.pg_dsn, min_size=0, max_size=2)
    try:
        for session_id, silent_s in ((stale, 3600), (live, 0)):
            await pool.execute(
                "INSERT INTO voice_sessions (id, gym_id, member_id, kiosk_id, room, started_at, heartbeat_at)"
                " VALUES ($1, $2, $3, 'accueil-9', $4, now() - interval '2 hours', now() - make_interval(secs => $5))",
                session_id, LYON_GYM_ID, CAMILLE["member_id"], f"jarvis-{session_id}", float(silent_s),
            )  # fmt: skip
        sweeper = Sweeper(sweeper_settings(stack, tmp_path, sweep_after_s=3.0), pool=pool)
        # Just connected: the sweeper first gives live sessions a window to beat.
        assert (await sweeper.sweep_once()).ended_stale == []
        await asyncio.sleep(3.2)
        await pool.execute("UPDATE voice_sessions SET heartbeat_at = now() WHERE id = $1", live)
        assert (await sweeper.sweep_once()).ended_stale == [stale]
        assert await resolve_session_refused(pool, stale)
        assert not await resolve_session_refused(pool, live)
    finally:
        await pool.close()
    row = await session_row(stack, stale)
    assert row is not None and row["outcome"] == "interrompue"
    assert row["ended_at"] < row["created_at"]  # ended when it was last heard of, not when swept


async def resolve_session_refused(pool: Any, session_id: str) -> bool:
    try:
        await resolve_session(pool, f"Bearer {LYON_KEY}", session_id)
    except SessionRefused:
        return True
    return False
