"""Fault row "worker process killed mid-turn" (docs/faults.md): the member asked a question and
JARVIS is in the middle of its answer (the LLM has sent its first words) when the worker and its
job processes get SIGKILL. systemd starts a new worker.

Everything said before the kill, the question being answered included, reaches PostgreSQL from
the dead job's outbox (the new worker's sweeper replays it) and the session is ended 'interrompue'.
The half-generated answer was never said: it is not in the log. The next badge scan gets JARVIS.
(The same kill during a 60 s database outage: tests/platform/test_session_log_durable.py.)
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from jarvis_local.kiosk_sim import poll
from jarvis_local.llm_standin import Say
from tests.faults.conftest import AGENT, Jarvis, log_lines, rows, visit, voice_session
from tests.platform.test_session_log_durable import kill_9, outbox_rows

pytestmark = pytest.mark.integration

LONG_ANSWER = "Pour réserver un cours de yoga, ouvre l'application, choisis le créneau puis confirme."


async def test_worker_killed_mid_answer_loses_nothing_said(llms: Jarvis) -> None:
    stack = llms.stack
    member = await visit(llms)
    try:
        answer, _ = await member.ask("Vous ouvrez à quelle heure demain ?")
        assert answer == "Réponse du primaire : Vous ouvrez à quelle heure demain ?"

        # The answer's first words are out of the LLM, the rest is on its way: kill then.
        llms.primary.script(lambda _request: Say(LONG_ANSWER, stall_after_words=3, stall_s=5))
        asked = len(llms.primary.requests)
        await member.kiosk.send_chat("Comment je réserve un cours de yoga ?")
        await poll(lambda: len(llms.primary.requests) > asked, 15, what="the LLM request for the question")
        # Killed once the question is in the outbox (fsynced in a thread: on a loaded box, later
        # than the request): what this test proves is that nothing on disk is lost.
        await poll(
            lambda: any(r.get("text") == "Comment je réserve un cours de yoga ?"
                        for r in outbox_rows(stack, member.session_id)),
            15, what="the question in the session's outbox",
        )  # fmt: skip
        await asyncio.sleep(0.5)
        killed = await asyncio.to_thread(kill_9, stack, llms.log_name)
    finally:
        await member.leave()

    # systemd's restart: a new worker process, whose sweeper finds the dead job's outbox.
    worker_env = {"JARVIS_NUM_IDLE_PROCESSES": "1", **llms.worker_env, "JARVIS_AGENT_NAME": AGENT}
    await asyncio.to_thread(stack.start_agent_worker, worker_env, llms.log_name)

    async def interrupted() -> asyncpg.Record | None:
        row = await voice_session(stack, member.session_id)
        return row if row is not None and row["outcome"] == "interrompue" else None

    record = await poll(interrupted, 60, every_s=0.25, what="the sweeper to end the killed session")
    logged = [(r["kind"], r["text"]) for r in await rows(stack, member.session_id)]
    print(f"\nworker killed mid-answer ({killed} processes): the log holds {logged}; outcome {record['outcome']!r}")
    assert logged[0][0] == "agent" and "Camille" in logged[0][1]
    assert logged[1:] == [
        ("user", "Vous ouvrez à quelle heure demain ?"),
        ("agent", "Réponse du primaire : Vous ouvrez à quelle heure demain ?"),
        ("user", "Comment je réserve un cours de yoga ?"),
    ]
    # logged by the sweeper after its commit, which the poll above may have seen first
    await poll(lambda: log_lines(llms.worker_log(), member.session_id, "ended as interrompue"), 10,
               what="the sweeper's log line")

    # The next badge scan is served by the new worker.
    llms.primary.script(lambda _request: Say("Me revoilà."))
    again = await visit(llms, "LYON-0002")
    try:
        answer, _ = await again.ask("Ça marche ?")
        assert answer == "Me revoilà."
    finally:
        await again.leave()
